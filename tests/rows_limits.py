"""Bad-input matrix rows: memory and time bounds: long inputs, fan-out, streaming."""

from __future__ import annotations

from tests.badinput import Case

CASES: list[Case] = []
