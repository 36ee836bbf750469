"""One-off check of the >2 GB export path on a random-weight gpt2-large-shape model.

Run from the repository root (needs ~16 GB of RAM and ~10 GB of disk; not part of CI):

    .venv/bin/python scripts/check_large_export.py [--keep]

Builds the model (36 layers, 20 heads, 1280 wide: 774M parameters, ~3.1 GB in fp32) under
bench/out/, exports it with `gpt2cli export-onnx` (which validates it against PyTorch), loads
the export back on the onnx backend, and prints the export time, file sizes and a forward pass.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "large"
LARGE_SHAPE = {"n_layer": 36, "n_head": 20, "n_embd": 1280, "n_positions": 1024}
sys.path.insert(0, str(ROOT))


def main() -> None:
    from gpt2cli.backends.base import position_ids_from_mask
    from gpt2cli.loader import load_backend
    from tests.models import build_random_model

    source = OUT / "gpt2-large-random"
    target = OUT / "gpt2-large-onnx"
    if not (source / "model.safetensors").is_file():
        started = time.perf_counter()
        build_random_model(source, seed=0, **LARGE_SHAPE)
        print(f"built {source} in {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    export = subprocess.run(
        [sys.executable, "-m", "gpt2cli", "export-onnx", str(source), str(target), "--force"],
        capture_output=True, text=True,
    )
    seconds = time.perf_counter() - started
    print(f"export-onnx exit {export.returncode} in {seconds:.0f} s: {export.stdout.strip()}")
    if export.returncode:
        sys.exit(export.stderr)
    manifest = json.loads((target / "gpt2cli-export.json").read_text())
    for name, size in manifest["files"].items():
        print(f"  {name}: {size / 1e6:.1f} MB")

    started = time.perf_counter()
    backend = load_backend(str(target))
    loaded = time.perf_counter() - started
    ids = np.array([backend.tokenizer.encode("Hello, I'm a language model,")], dtype=np.int64)
    mask = np.ones_like(ids)
    result = backend.forward(ids, mask, position_ids_from_mask(mask, ids.shape[1]), hidden_layer=-1)
    print(
        f"loaded back on {backend.name} in {loaded:.1f} s; logits {result.logits.shape}, "
        f"hidden {result.hidden.shape}, finite: {bool(np.isfinite(result.logits).all())}"
    )
    print(f"validation: {json.dumps(manifest['validation'])}")
    if "--keep" not in sys.argv:
        shutil.rmtree(target)


if __name__ == "__main__":
    main()
