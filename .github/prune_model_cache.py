"""Delete from a model cache the checkpoints that the current code can never load again.

Every file of the model cache carries its key (`cvae_utils.cache.model_key`), which holds the
digest of the code that trained it and the versions of torch and Pyro. The deploy workflow
(``.github/workflows/book.yml``) restores the newest cache of its budget even when that code
changed since, so that the models the change does not touch are not trained again; the files
of the old keys would then ride along in every later cache, which GitHub caps at 10 GB per
repository. This script deletes exactly those: a checkpoint whose code digest is not what
`cvae_utils.cache.code_digest` gives for its kind now, or whose torch or Pyro version is not
the installed one. Everything else stays, whatever its budget, seed or config, and so do the
tables (a few KB) and any file it cannot read (the cache reports those itself when it meets
them).

    python .github/prune_model_cache.py [DIRECTORY]     # default: CVAE_CACHE_DIR
    python .github/prune_model_cache.py --dry-run       # only list them
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyro
import torch

from cvae_utils.cache import MODEL_CODE, cache_dir, code_digest


def stale_reason(key: dict) -> str | None:
    """Why the current code would never load the model of ``key``, or None if it might."""
    kind = key.get("kind")
    if kind not in MODEL_CODE:
        return None  # not a model of this package's: leave it alone
    if key.get("code") != code_digest(*MODEL_CODE[kind]):
        return f"trained by other code ({key.get('code')})"
    versions = {"torch": torch.__version__, "pyro": pyro.__version__}
    if key.get("versions") != versions:
        return f"trained with other versions ({key.get('versions')})"
    return None


def prune(directory=None, dry_run: bool = False) -> list[tuple[Path, str, int]]:
    """Delete (or with ``dry_run`` only list) the stale checkpoints of the model cache
    ``directory`` (default ``CVAE_CACHE_DIR``): (path, reason, bytes) of each."""
    stale = []
    for path in sorted(cache_dir(directory).glob("*.pt")):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            key = json.loads(payload["key"])
            del payload
        except Exception:
            continue
        reason = stale_reason(key) if isinstance(key, dict) else None
        if reason:
            size = path.stat().st_size
            if not dry_run:
                path.unlink()
            stale.append((path, reason, size))
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", default=None,
                        help="the model cache (default: $CVAE_CACHE_DIR)")
    parser.add_argument("--dry-run", action="store_true", help="list, delete nothing")
    args = parser.parse_args(argv)
    directory = cache_dir(args.directory)
    if not directory.is_dir():
        print(f"{directory}: no model cache yet, nothing to prune")
        return 0
    present = len(list(directory.glob("*.pt")))
    stale = prune(directory, args.dry_run)
    for path, reason, _ in stale:
        print(f"{'stale' if args.dry_run else 'deleted'}: {path.name}: {reason}")
    total = sum(size for *_, size in stale)
    kept = present - len(stale)
    print(f"{directory}: {len(stale)} stale checkpoint{'s' * (len(stale) != 1)} "
          f"({total / 2**20:.0f} MiB){' (dry run)' if args.dry_run else ' deleted'}, "
          f"{kept} kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
