"""Bad-input matrix rows: -o files, export-onnx OUTDIR and other places output is written."""

from __future__ import annotations

from tests.badinput import Case

CASES: list[Case] = []
