// The interactive chapter: draw part of a digit, and the book's baseline and CVAE complete it
// in the browser with onnxruntime-web. No server: everything is a static file of the build.
//
// Files (written by cvae_utils.browser.export_interactive and the book's Sphinx extension):
//   <models>/index.json          the layouts k = 1, 2, 3 with their manifests (input mask, z_dim)
//   <models>/k<k>/*.onnx         baseline, prior and generation networks, fetched when first needed
//   <models>/digits.json         a few test digits
//   <ort>/ort.wasm.bundle.min.js, ort-wasm-simd-threaded.wasm   onnxruntime-web, one thread
//
// The wiring is that of cvae_utils.export.torch_completions:
//   guess = baseline(x); [loc, scale] = prior(x, guess); z = loc + scale * eps; probs = generation(z, x)
// Colours, orientation and the input-region line are those of cvae_utils.plotting.
// For tests, window.cvaeInteractive.complete(k, x, eps) runs the models on given input and noise.

const SIDE = 28, PIXELS = SIDE * SIDE, NUM_SAMPLES = 16;
const MISSING = [0xc9, 0xd9, 0xee];   // MISSING_COLOR: pixels that are not part of x
const BOUNDARY = "#d95f02";           // BOUNDARY_COLOR: the border of the input region
const PEN = 2.5;                      // stroke thickness in pixels, as draw_digit_strokes

const root = document.getElementById("cvae-interactive");
const statusLine = root.querySelector(".cvae-status");
const api = { settings: new Map(), timings: { clicks: [] } };
window.cvaeInteractive = api;

function say(text, state) {
  statusLine.textContent = text;
  if (state) root.dataset.state = state;
}

// ------------------------------------------------------------------------------ the runtime
let ortModule = null;
async function runtime() {
  if (!ortModule) {
    const base = new URL(root.dataset.ort, document.baseURI).href;
    try {
      ortModule = await import(base + "ort.wasm.bundle.min.js");
    } catch (error) {
      throw new Error("onnxruntime-web is missing from this build (" + error.message +
                      "): run `npm ci` in the repository and build the book again");
    }
    performance.mark("cvae:runtime-imported");
    ortModule.env.wasm.numThreads = 1;     // no SharedArrayBuffer needed: any static host
    // the binary only: the bundle holds its JavaScript glue, so no ort-wasm-*.mjs is fetched
    ortModule.env.wasm.wasmPaths = { wasm: base + "ort-wasm-simd-threaded.wasm" };
  }
  return ortModule;
}

async function fetchJSON(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

const modelsBase = () => new URL(root.dataset.models, document.baseURI).href;
let indexPromise = null;
const index = () => (indexPromise ??= fetchJSON(modelsBase() + "index.json"));

async function loadSetting(k) {
  if (!api.settings.has(k)) {
    api.settings.set(k, (async () => {
      const [ort, idx] = await Promise.all([runtime(), index()]);
      const manifest = idx.settings[String(k)];
      const dir = modelsBase() + manifest.path + "/";
      // full graph optimisation folds the float16 -> float32 casts of the weights once, when
      // the sessions are created (a few tenths of a second), instead of casting 2.7 million
      // weights at every run (benchmarks/bench_onnx_sessions.mjs measures both)
      const options = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
      const names = Object.keys(manifest.files);
      const sessions = await Promise.all(names.map(
        (name) => ort.InferenceSession.create(dir + manifest.files[name].path, options)));
      performance.mark(`cvae:models-k${k}`);
      const setting = { k, manifest, mask: Uint8Array.from(manifest.input_mask) };
      names.forEach((name, i) => { setting[name] = sessions[i]; });
      return setting;
    })());
  }
  return api.settings.get(k);
}

// x: Float32Array(784) with -1 at missing pixels; eps: Float32Array(S * z_dim)
async function complete(k, x, eps) {
  const ort = await runtime();
  const s = await loadSetting(k);
  const zDim = s.manifest.z_dim, num = eps.length / zDim;
  const x1 = new ort.Tensor("float32", Float32Array.from(x), [1, PIXELS]);
  const { probs: guess } = await s.baseline.run({ x: x1 });
  const { loc, scale } = await s.prior.run({ x: x1, guess });
  const z = new Float32Array(num * zDim), xs = new Float32Array(num * PIXELS);
  for (let i = 0; i < num; i++) {
    for (let j = 0; j < zDim; j++) z[i * zDim + j] = loc.data[j] + scale.data[j] * eps[i * zDim + j];
    xs.set(x1.data, i * PIXELS);
  }
  const { probs } = await s.generation.run({
    z: new ort.Tensor("float32", z, [num, zDim]), x: new ort.Tensor("float32", xs, [num, PIXELS]) });
  return { guess: Array.from(guess.data), samples: Array.from(probs.data), numSamples: num };
}
api.complete = (k, x, eps) => complete(k, Float32Array.from(x), Float32Array.from(eps));

function normalNoise(n) {  // Box-Muller
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = 1 - Math.random(), v = Math.random(), r = Math.sqrt(-2 * Math.log(u));
    out[i] = r * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  return out;
}

// ------------------------------------------------------------------------------- drawing
const inputCanvas = root.querySelector(".cvae-input");
const baselineCanvas = root.querySelector(".cvae-baseline");
const samplesCanvas = root.querySelector(".cvae-samples");
const ink = new Float32Array(PIXELS);   // what the reader drew (or the loaded digit), in [0, 1]
let k = Number(root.querySelector("input[name=cvae-k]:checked").value);
let mask = null;                        // Uint8Array(784), 1 at input pixels of layout k

function currentInput() {
  const x = new Float32Array(PIXELS);
  for (let i = 0; i < PIXELS; i++) x[i] = mask[i] ? ink[i] : -1;
  return x;
}
api.currentInput = () => Array.from(currentInput());
api.layout = () => k;

// one tile: pixel values in [0, 1] dark on white, -1 pale blue; the input region outlined
function paintTile(ctx, values, left, top, scale) {
  const image = ctx.createImageData(SIDE, SIDE);
  for (let i = 0; i < PIXELS; i++) {
    const v = values[i];
    const rgb = v < 0 ? MISSING : [0, 0, 0].map(() => Math.round(255 * (1 - Math.min(1, v))));
    image.data.set([...rgb, 255], 4 * i);
  }
  const tile = new OffscreenCanvas(SIDE, SIDE);
  tile.getContext("2d").putImageData(image, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(tile, left, top, SIDE * scale, SIDE * scale);
  ctx.strokeStyle = BOUNDARY;
  ctx.lineWidth = Math.max(1, scale / 6);
  ctx.beginPath();
  const h = (SIDE / 2) * scale, w = SIDE * scale;
  const segments = { 1: [[0, h, h, h], [h, h, h, w]], 2: [[h, 0, h, w]],
                     3: [[h, h, w, h], [h, h, h, w]] }[k];
  for (const [x0, y0, x1, y1] of segments) {
    ctx.moveTo(left + x0, top + y0);
    ctx.lineTo(left + x1, top + y1);
  }
  ctx.stroke();
}

function fillKnown(prediction, offset = 0) {  // input pixels kept, the prediction elsewhere
  const out = new Float32Array(PIXELS);
  for (let i = 0; i < PIXELS; i++) out[i] = mask[i] ? ink[i] : prediction[offset + i];
  return out;
}

function drawInput() {
  const ctx = inputCanvas.getContext("2d");
  ctx.fillStyle = "white";
  ctx.fillRect(0, 0, inputCanvas.width, inputCanvas.height);
  paintTile(ctx, currentInput(), 0, 0, inputCanvas.width / SIDE);
}

function drawResults(result) {
  const b = baselineCanvas.getContext("2d");
  paintTile(b, fillKnown(result.guess), 0, 0, baselineCanvas.width / SIDE);
  const ctx = samplesCanvas.getContext("2d"), cols = 4, pad = 2;
  const scale = samplesCanvas.width / (cols * SIDE + (cols - 1) * pad);
  ctx.fillStyle = "white";   // PAD_COLOR between tiles
  ctx.fillRect(0, 0, samplesCanvas.width, samplesCanvas.height);
  for (let s = 0; s < result.numSamples; s++) {
    const r = Math.floor(s / cols), c = s % cols;
    paintTile(ctx, fillKnown(result.samples, s * PIXELS),
              c * (SIDE + pad) * scale, r * (SIDE + pad) * scale, scale);
  }
}

let pending = null, again = false;
async function refresh(kind) {  // complete the current input; one run at a time, the latest wins
  if (pending) { again = true; return pending; }
  pending = (async () => {
    const start = performance.now();
    const setting = await loadSetting(k);
    const result = await complete(k, currentInput(), normalNoise(NUM_SAMPLES * setting.manifest.z_dim));
    drawResults(result);
    const ms = performance.now() - start;
    if (kind === "click") api.timings.clicks.push(ms);
    if (api.timings.firstCompletion === undefined) {
      api.timings.firstCompletion = performance.now();   // ms since the page started loading
      performance.mark("cvae:first-completion");
    }
    say(`${NUM_SAMPLES} samples in ${ms.toFixed(0)} ms (layout: ${k} input quadrant${k > 1 ? "s" : ""})`,
        "ready");
  })();
  try { await pending; } catch (error) { say(error.message, "error"); throw error; }
  finally { pending = null; }
  if (again) { again = false; return refresh(kind); }
}
api.refresh = refresh;

function stamp(col, row) {  // anti-aliased round pen, as cvae_utils.complete.draw_digit_strokes
  const reach = Math.ceil(PEN / 2 + 1);
  for (let r = Math.floor(row) - reach; r <= Math.ceil(row) + reach; r++) {
    for (let c = Math.floor(col) - reach; c <= Math.ceil(col) + reach; c++) {
      if (r < 0 || c < 0 || r >= SIDE || c >= SIDE || !mask[r * SIDE + c]) continue;
      const value = Math.min(1, Math.max(0, PEN / 2 + 0.5 - Math.hypot(c - col, r - row)));
      ink[r * SIDE + c] = Math.max(ink[r * SIDE + c], value);
    }
  }
}

let last = null;
function toGrid(event) {
  const box = inputCanvas.getBoundingClientRect();
  return [((event.clientX - box.left) / box.width) * SIDE - 0.5,
          ((event.clientY - box.top) / box.height) * SIDE - 0.5];
}
inputCanvas.addEventListener("pointerdown", (event) => {
  if (!mask) return;
  inputCanvas.setPointerCapture(event.pointerId);
  last = toGrid(event);
  stamp(...last);
  drawInput();
  event.preventDefault();
});
inputCanvas.addEventListener("pointermove", (event) => {
  if (!last) return;
  const point = toGrid(event), steps = Math.ceil(Math.hypot(point[0] - last[0], point[1] - last[1]) * 2);
  for (let i = 1; i <= steps; i++) {
    stamp(last[0] + ((point[0] - last[0]) * i) / steps, last[1] + ((point[1] - last[1]) * i) / steps);
  }
  last = point;
  drawInput();
  event.preventDefault();
});
for (const type of ["pointerup", "pointercancel"]) {
  inputCanvas.addEventListener(type, () => {
    if (!last) return;
    last = null;
    refresh("stroke").catch(() => {});
  });
}

async function useLayout(newK) {
  k = newK;
  say(`loading the models of ${k} input quadrant${k > 1 ? "s" : ""} ...`, "loading");
  mask = (await loadSetting(k)).mask;
  drawInput();
  await refresh("layout");
}

let digits = null;
async function loadDigit(i) {
  digits ??= await fetchJSON(modelsBase() + "digits.json");
  ink.set(digits.images[i]);
  drawInput();
  await refresh("digit");
}
api.loadDigit = loadDigit;

root.querySelectorAll("input[name=cvae-k]").forEach((radio) =>
  radio.addEventListener("change", () => useLayout(Number(radio.value)).catch(() => {})));
root.querySelector(".cvae-clear").addEventListener("click", () => {
  ink.fill(0);
  drawInput();
  refresh("clear").catch(() => {});
});
root.querySelector(".cvae-resample").addEventListener("click", () => refresh("click").catch(() => {}));
const digitPicker = root.querySelector(".cvae-digit");
digitPicker.addEventListener("change", () => {
  if (digitPicker.value !== "") loadDigit(Number(digitPicker.value)).catch(() => {});
});

// start: the layout checked in the HTML and the first test digit, completed at once
api.ready = (async () => {
  try {
    performance.mark("cvae:start");
    say("loading onnxruntime-web and the models ...", "loading");
    const setting = loadSetting(k);   // runtime, index and models, fetched at once
    digits = await fetchJSON(modelsBase() + (await index()).digits);
    digitPicker.append(...digits.images.map((_, i) =>
      new Option(`test digit ${i + 1}`, String(i))));
    mask = (await setting).mask;
    await loadDigit(0);
    digitPicker.value = "0";
  } catch (error) {
    say(error.message, "error");
  }
})();
