"""Bad-input matrix rows: inconsistent or hostile model directories, threads, runtime logs."""

from __future__ import annotations

from tests.badinput import Case

CASES: list[Case] = []
