// Session creation and one page run (baseline, prior, 16 samples of the generation network) of
// the interactive chapter's models in onnxruntime-web's WebAssembly backend, single-threaded,
// under Node.js, for two graph optimisation levels, alternated to share the machine's noise.
// "disabled" keeps a Cast from float16 to float32 per weight in the graph, run at every call;
// "all" folds them once, when the session is created.
//
//   node benchmarks/bench_onnx_sessions.mjs book/_static/generated/interactive/k1 [repeats]
//
// (after `npm ci` and a build, which writes the models). Prints medians in milliseconds.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const ort = await import(pathToFileURL(
  path.join(repo, "node_modules/onnxruntime-web/dist/ort.wasm.bundle.min.mjs")).href);
ort.env.wasm.numThreads = 1;
const dir = process.argv[2];
const repeats = Number(process.argv[3] ?? 4);
if (!dir) throw new Error("usage: node benchmarks/bench_onnx_sessions.mjs <models folder> [repeats]");
const manifest = JSON.parse(fs.readFileSync(path.join(dir, "manifest.json"), "utf8"));
const buffers = Object.fromEntries(Object.entries(manifest.files).map(
  ([name, entry]) => [name, fs.readFileSync(path.join(dir, entry.path))]));
const zDim = manifest.z_dim;
await ort.InferenceSession.create(buffers.baseline);  // compile the WebAssembly module first

const results = { disabled: { create: [], run: [] }, all: { create: [], run: [] } };
for (let rep = 0; rep < repeats; rep++) {
  for (const level of Object.keys(results)) {
    let start = performance.now();
    const s = {};
    for (const name in buffers) {
      s[name] = await ort.InferenceSession.create(buffers[name], {
        executionProviders: ["wasm"], graphOptimizationLevel: level });
    }
    results[level].create.push(performance.now() - start);
    const x = new ort.Tensor("float32", new Float32Array(784).fill(-1), [1, 784]);
    for (let i = 0; i < 5; i++) {
      start = performance.now();
      const { probs: guess } = await s.baseline.run({ x });
      await s.prior.run({ x, guess });
      await s.generation.run({
        z: new ort.Tensor("float32", new Float32Array(16 * zDim), [16, zDim]),
        x: new ort.Tensor("float32", new Float32Array(16 * 784).fill(-1), [16, 784]) });
      results[level].run.push(performance.now() - start);
    }
  }
}
const median = (a) => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)];
console.log(`models of ${dir} (${manifest.weights} weights), ${repeats} repeats`);
for (const [level, r] of Object.entries(results)) {
  console.log(`graphOptimizationLevel ${level.padEnd(8)}: create 3 sessions ${median(r.create).toFixed(0)} ms, ` +
              `one page run (16 samples) ${median(r.run).toFixed(1)} ms`);
}
