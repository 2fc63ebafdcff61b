"""The fault-injection harness as a (slow) test: SIGKILLed runs resumed with --resume end identical."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "fault_injection.py"


@pytest.mark.slow
def test_killed_runs_resume_to_identical_results(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("fault_injection", HARNESS)
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    rc = harness.main(["--trials", "4", "--seed", "1", "--workdir", str(tmp_path)])  # one trial per target
    out = capsys.readouterr().out
    assert "survived 4/4" in out and rc == 0, out
