"""`teli bench`: suites of methods over seeds, resumable cells, tables, plot; the speed suite's helpers."""

from __future__ import annotations

import json

import pytest

from teli import bench
from teli.cli import main
from teli.config import build_config
from teli.errors import TeliError

TINY = {"teachers.optim.steps": 8, "student.optim.steps": 8, "threads": 1, "checkpoint.every": 0}
METHODS = ["supervised-only", "fixmatch", "TELI-beta"]


def test_interrupted_bench_resumes_without_recomputing_finished_cells(tmp_path, monkeypatch):
    real = bench.distill
    calls: list[str] = []
    fail = {"at": 2}

    def failing_second(cfg, teachers_run, overwrite=False):
        calls.append(cfg.name)
        if len(calls) == fail["at"]:
            raise RuntimeError("killed")
        return real(cfg, teachers_run, overwrite)

    monkeypatch.setattr(bench, "distill", failing_second)
    with pytest.raises(RuntimeError, match="killed"):
        bench.run_suite("digits", [0], tmp_path, TINY, methods=METHODS)
    first = tmp_path / "digits" / "supervised-only-s0" / "summary.json"
    teachers = tmp_path / "digits" / "teachers-s0" / "summary.json"
    stamps = first.stat().st_mtime_ns, teachers.stat().st_mtime_ns
    assert not (tmp_path / "digits" / "results.json").exists()

    calls.clear()
    fail["at"] = None
    results = bench.run_suite("digits", [0], tmp_path, TINY, methods=METHODS)
    assert calls == ["fixmatch-s0", "TELI-beta-s0"]  # the finished cell was not run again
    assert (first.stat().st_mtime_ns, teachers.stat().st_mtime_ns) == stamps
    assert [r["method"] for r in results["rows"]] == ["teacher 1", "teacher 2", *METHODS]
    assert all(len(r["accuracy"]) == 1 and r["steps"] in (None, 8) for r in results["rows"])
    saved = json.loads((tmp_path / "digits" / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(results["rows"]))
    table = (tmp_path / "digits" / "results.md").read_text()
    assert "equal steps" in table and "| fixmatch | fixmatch |" in table
    assert (tmp_path / "digits" / "accuracy_vs_time.png").stat().st_size > 1000


def test_a_finished_cell_made_with_other_settings_is_refused_naming_the_key(tmp_path):
    bench.run_suite("digits", [0], tmp_path, TINY, methods=["TELI-beta"])
    with pytest.raises(TeliError, match=r"TELI-beta-s0 was run with teli.alpha=0.1, the bench now asks for 0.5: delete") as err:
        bench.run_suite("digits", [0], tmp_path, {**TINY, "teli.alpha": 0.5}, methods=["TELI-beta"])
    assert "\n" not in str(err.value)
    with pytest.raises(TeliError, match=r"teachers-s0 was run with teachers.optim.steps=8"):
        bench.run_suite("digits", [0], tmp_path, {**TINY, "teachers.optim.steps": 9}, methods=["TELI-beta"])


def _as_in_git(suite_dir):
    """What a fresh checkout holds of a bench folder: each cell's summary.json and config.yaml (.gitignore)."""
    import shutil

    for cell in (p for p in suite_dir.iterdir() if p.is_dir()):
        for item in cell.iterdir():
            if item.name not in ("summary.json", "config.yaml"):
                shutil.rmtree(item) if item.is_dir() else item.unlink()


def test_a_fresh_checkout_goes_on_from_the_committed_cells(tmp_path, monkeypatch):
    import shutil

    bench.run_suite("digits", [0], tmp_path, TINY, methods=["supervised-only", "TELI-beta"])
    suite = tmp_path / "digits"
    _as_in_git(suite)
    shutil.rmtree(suite / "TELI-beta-s0")  # a cell still to run
    real, calls = bench.distill, []
    monkeypatch.setattr(bench, "distill", lambda cfg, *a, **k: calls.append(cfg.name) or real(cfg, *a, **k))
    results = bench.run_suite("digits", [0], tmp_path, TINY, methods=["supervised-only", "TELI-beta"])
    assert calls == ["TELI-beta-s0"]  # the committed cell is reused; the teachers were trained again, the same
    assert list((suite / "teachers-s0" / "teachers").glob("teacher_*.safetensors"))
    assert [r["method"] for r in results["rows"]] == ["teacher 1", "teacher 2", "supervised-only", "TELI-beta"]

    # teachers that come out different (another machine, another library) are not mixed with the finished cells
    _as_in_git(suite)
    shutil.rmtree(suite / "TELI-beta-s0")
    summary = json.loads((suite / "teachers-s0" / "summary.json").read_text())
    summary["models"][0]["accuracy"] += 0.01
    (suite / "teachers-s0" / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(TeliError, match=r"teachers-s0 were trained again .* delete .*digits to rerun the whole suite"):
        bench.run_suite("digits", [0], tmp_path, TINY, methods=["supervised-only", "TELI-beta"])


def test_time_budget_scales_steps_by_measured_step_time(tmp_path, monkeypatch):
    import teli.speed

    monkeypatch.setattr(teli.speed, "step_times", lambda cfgs, data, logits, **kw: {"TELI-beta": 0.1, "fixmatch": 0.2})
    equal_steps = bench.run_suite("digits", [0], tmp_path, TINY, methods=["TELI-beta"])
    real, calls = bench.distill, []
    monkeypatch.setattr(bench, "distill", lambda cfg, *a, **k: calls.append(cfg.name) or real(cfg, *a, **k))
    results = bench.run_suite("digits", [0], tmp_path, TINY, budget="time", methods=["fixmatch", "TELI-beta"])
    assert results["steps"] == {"TELI-beta": 8, "fixmatch": 4}  # twice as slow: half the steps
    assert calls == ["fixmatch-s0"]  # the reference keeps the suite's steps: its equal-steps cell is the same run
    assert results["rows"][-1]["accuracy"] == equal_steps["rows"][-1]["accuracy"]

    # a method added later is calibrated against the reference then; the steps already used stay
    # (and a method with 2 rounds, whose budget step is two student steps, gets half the steps of its step time)
    new = {"TELI-beta", "TELI-meta", "TELI-beta+strong+2rounds"}
    monkeypatch.setattr(teli.speed, "step_times", lambda cfgs, data, logits, **kw: {"TELI-beta": 0.3, "TELI-meta": 0.6,
                        "TELI-beta+strong+2rounds": 0.3} if set(cfgs) == new else pytest.fail(f"measured {sorted(cfgs)}"))
    more = bench.run_suite("digits", [0], tmp_path, TINY, budget="time", methods=["fixmatch", *sorted(new)])
    assert more["steps"] == {"TELI-beta": 8, "fixmatch": 4, "TELI-meta": 4, "TELI-beta+strong+2rounds": 4}
    assert calls[-2:] == ["TELI-beta+strong+2rounds-s0", "TELI-meta-s0"]
    assert json.loads((tmp_path / "digits-time" / "calibration.json").read_text())["steps"]["fixmatch"] == 4
    assert "equal wall time" in (tmp_path / "digits-time" / "results.md").read_text()
    fixmatch = json.loads((tmp_path / "digits-time" / "fixmatch-s0" / "summary.json").read_text())
    assert fixmatch["algorithm"] == "fixmatch"
    assert "steps: 4" in (tmp_path / "digits-time" / "fixmatch-s0" / "config.yaml").read_text()


def test_suites_build_valid_configs_and_bad_names_are_refused(tmp_path):
    for suite in bench.SUITES:
        bench.config_for_suite(suite)  # every suite's preset validates
        for method in bench.SUITES[suite]["methods"]:
            assert bench.cell_config(suite, method, 0, tmp_path).algorithm == bench.METHODS[method]["algorithm"]
    assert bench.config_for_suite("fashion-mnist-100").data.labels_per_class == 100
    assert bench.config_for_suite("cifar10-40").data.labels_per_class == 4
    with pytest.raises(TeliError, match="unknown bench suite"):
        bench.run_suite("nope", [0], tmp_path)
    with pytest.raises(TeliError, match="unknown method"):
        bench.run_suite("digits", [0], tmp_path, methods=["nope"])
    assert main(["bench", "--suite", "digits", "--set", "nonsense.key=1", "--out", str(tmp_path)]) == 2


def test_speed_helpers_time_every_kind_and_plain_step_sees_all_images(ssl_data):
    import torch

    from teli.speed import interleaved, make_stepper

    cfg = build_config(overrides={"student.optim.batch_size": 8, "student.unlabelled_batch_size": 16})
    logits = torch.randn(2, len(ssl_data.x_u), ssl_data.num_classes)
    seen = []
    step = make_stepper(cfg, ssl_data, logits, plain=True)
    times = interleaved({"plain": step, "teli": make_stepper(cfg, ssl_data, logits),
                         "fixmatch": make_stepper(build_config(cfg.model_dump(), {"algorithm": "fixmatch"}), ssl_data, None)},
                        steps=1, repeats=2, warmup=0)
    assert set(times) == {"plain", "teli", "fixmatch"}
    assert all(0 < t["data"] < t["step"] for t in times.values())
    from teli.speed import PlainSupervised

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(len(x))
            return torch.zeros(len(x), 10, requires_grad=True)

    batch = {"x_l": torch.zeros(8, 1, 8, 8), "y_l": torch.zeros(8, dtype=torch.long),
             "x_u": torch.zeros(16, 1, 8, 8), "idx_u": torch.arange(16)}
    PlainSupervised(Spy(), ssl_data).train_step(batch, None)
    assert seen == [24]


def test_speed_suite_writes_ratios_and_table(tmp_path):
    from teli.speed import run_speed_suite

    r = run_speed_suite(tmp_path, {"teachers.optim.steps": 4, "student.optim.steps": 4, "threads": 1}, steps=1, repeats=1)
    assert set(r["ratios"]) >= {"TELI-beta / plain supervised", "TELI-meta / TELI-beta", "data share of a TELI-beta step"}
    assert all(v > 0 for v in r["ratios"].values())
    assert r["teli_run_wall_seconds"]["total"] > 0
    table = (tmp_path / "speed" / "results.md").read_text()
    assert "| TELI-meta / TELI-beta |" in table and "`teli run` wall time" in table
    assert json.loads((tmp_path / "speed" / "results.json").read_text())["suite"] == "speed"
