"""Bad-input matrix rows: the command line itself (terminal controls, closed descriptors,
pipes, encodings)."""

from __future__ import annotations

from tests.badinput import Case

CASES: list[Case] = []
