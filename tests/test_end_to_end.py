"""Whole runs through the CLI at reduced budgets: files, summary, printed table, evaluate, distill."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

from teli.cli import main
from teli.config import RunConfig, build_config
from teli.data import load_dataset

BUDGET = ["--set", "teachers.optim.steps=60", "--steps", "80", "--quiet", "--threads", "1"]
TABLE_NAMES = ["teacher 1", "teacher 2", "student (supervised only)", "student (TELI-beta)"]


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e")
    code, stdout, stderr = run_cli("run", "--out", str(out), "--name", "r", *BUDGET)
    assert code == 0, stderr
    return out / "r", stdout


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_folder_contents(full_run):
    run_dir, _ = full_run
    for name in ["config.yaml", "metrics.jsonl", "summary.json", "student.safetensors", "student.json", "supervised.safetensors",
                 "supervised.json", "teacher_logits.safetensors", "teachers/teacher_1.safetensors", "teachers/teacher_1.json",
                 "teachers/teacher_2.safetensors", "teachers/teacher_2.json"]:
        assert (run_dir / name).is_file(), name
        assert (run_dir / name).stat().st_size > 0, name
    assert not list(run_dir.rglob("*.tmp"))


def test_saved_config_reloads_and_records_the_budget(full_run):
    run_dir, _ = full_run
    cfg = build_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert isinstance(cfg, RunConfig)
    assert cfg.teachers.optim.steps == 60 and cfg.student.optim.steps == 80
    assert cfg.progress is False and cfg.name == "r"


def test_metrics_have_every_stage(full_run):
    run_dir, _ = full_run
    recs = records(run_dir)
    stages = {r["stage"] for r in recs}
    assert stages == {"teacher1", "teacher2", "supervised", "teli"}
    last_teli = [r for r in recs if r["stage"] == "teli"][-1]
    assert last_teli["step"] == 80
    assert {"loss", "loss_labelled", "loss_normal", "loss_mixup", "frac_agree", "frac_disagree"} <= last_teli.keys()
    assert [r for r in recs if r["stage"] == "teacher2"][-1]["step"] == 60


def test_summary(full_run):
    run_dir, _ = full_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [m["name"] for m in summary["models"]] == TABLE_NAMES
    for m in summary["models"]:
        assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["ece"] <= 1.0
    assert max(m["accuracy"] for m in summary["models"]) > 0.5  # digits at 5 labels/class: far above chance
    diag = summary["pseudo_labels"]
    n_pool = len(load_dataset("digits").x_train) - 50
    assert diag["pool_size"] == n_pool
    assert diag["agreement_rate"] + diag["disagreement_rate"] == pytest.approx(diag["confident_rate"])
    for key in ["pseudo_accuracy_agree", "teacher1_right_on_disagree", "teacher2_right_on_disagree", "any_teacher_right_on_disagree"]:
        assert key in diag
    assert summary["dataset"] == "digits" and summary["labels_per_class"] == 5 and summary["seed"] == 0


def test_printed_table_names_every_model(full_run):
    _, stdout = full_run
    for name in TABLE_NAMES:
        assert name in stdout
    assert "pseudo-labels" in stdout


def test_evaluate_reproduces_the_summary(full_run):
    run_dir, _ = full_run
    code, stdout, stderr = run_cli("evaluate", str(run_dir), "--json")
    assert code == 0, stderr
    again = json.loads(stdout)
    saved = json.loads((run_dir / "summary.json").read_text())
    assert [(m["name"], m["accuracy"]) for m in again["models"]] == [(m["name"], m["accuracy"]) for m in saved["models"]]
    assert again["pseudo_labels"] == saved["pseudo_labels"]


@pytest.fixture(scope="module")
def teachers_only(tmp_path_factory):
    out = tmp_path_factory.mktemp("teachers")
    code, _, stderr = run_cli("teachers", "--out", str(out), "--name", "t", "--seed", "3", *BUDGET)
    assert code == 0, stderr
    return out / "t"


def test_teachers_then_distill(teachers_only, tmp_path):
    assert sorted(p.name for p in (teachers_only / "teachers").iterdir()) == [
        "teacher_1.json", "teacher_1.safetensors", "teacher_2.json", "teacher_2.safetensors"]
    assert not (teachers_only / "student.safetensors").exists()
    code, stdout, stderr = run_cli("distill", "--teachers", str(teachers_only), "--out", str(tmp_path), "--name", "d",
                                   "--no-baseline", "--json", *BUDGET)
    assert code == 0, stderr
    summary = json.loads(stdout)
    run_dir = tmp_path / "d"
    assert (run_dir / "student.safetensors").is_file() and not (run_dir / "supervised.safetensors").exists()
    assert {r["stage"] for r in records(run_dir)} == {"teli"}  # the teachers were loaded, not retrained
    teachers_summary = json.loads((teachers_only / "summary.json").read_text())
    loaded = [m for m in summary["models"] if m["name"].startswith("teacher")]
    assert [(m["name"], m["accuracy"]) for m in loaded] == [(m["name"], m["accuracy"]) for m in teachers_summary["models"]]
    cfg = build_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert cfg.teachers.from_run == str(teachers_only)
    assert cfg.data.split_seed == 3  # the teachers' labelled split, though this run's seed is 0
    assert cfg.seed == 0


def test_command_line_wins_over_config_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("teli:\n  gamma: 0.3\n  threshold: 0.5\n")
    code, _, stderr = run_cli("run", "--config", str(config), "--gamma", "0.5", "--out", str(tmp_path), "--name", "o",
                              "--no-baseline", "--set", "teachers.optim.steps=5", "--steps", "5", "--quiet", "--threads", "1")
    assert code == 0, stderr
    saved = yaml.safe_load((tmp_path / "o" / "config.yaml").read_text())
    assert saved["teli"]["gamma"] == 0.5
    assert saved["teli"]["threshold"] == 0.5
    assert saved["student"]["optim"]["steps"] == 5
    assert saved["baseline"] is False


@pytest.mark.slow
def test_full_default_run_teli_beats_supervised(tmp_path):
    code, stdout, stderr = run_cli("run", "--out", str(tmp_path), "--name", "full", "--quiet", "--json")
    assert code == 0, stderr
    acc = {m["name"]: m["accuracy"] for m in json.loads(stdout)["models"]}
    assert acc["student (TELI-beta)"] >= acc["student (supervised only)"], acc


def test_python_api_with_the_supervised_algorithm(tiny_config):
    from teli import pipeline

    cfg = tiny_config.model_copy(update={"algorithm": "supervised", "baseline": False, "name": "api"})
    summary = pipeline.run(cfg)
    run_dir = Path(summary["run_dir"])
    assert run_dir == Path(cfg.out_dir) / "api"
    # an algorithm outside USES_TEACHERS trains no teachers
    assert [m["name"] for m in summary["models"]] == ["student (supervised)"]
    assert {r["stage"] for r in records(run_dir)} == {"supervised"}
    last = records(run_dir)[-1]
    assert last["step"] == 20 and "loss_normal" not in last  # no unlabelled terms
    assert json.loads((run_dir / "student.json").read_text())["kind"] == "student"


def test_distill_reuses_the_teachers_cached_logits_and_keeps_the_students_data_settings(tmp_path, monkeypatch):
    from teli import pipeline, teachers as teachers_module
    from teli.config import build_config

    small = {"teachers.optim.steps": 20, "student.optim.steps": 5, "progress": False, "out_dir": str(tmp_path)}
    pipeline.train_teachers(build_config(overrides={**small, "name": "T"}))
    calls = []
    monkeypatch.setattr(pipeline, "teacher_logits", lambda *a, **k: calls.append(1) or teachers_module.teacher_logits(*a, **k))
    cfg = build_config(overrides={**small, "name": "S", "data.strong_augment": True, "baseline": False})
    summary = pipeline.distill(cfg, tmp_path / "T")
    assert calls == [], "the pool was run through the teachers again"
    assert "strong_augment: true" in (tmp_path / "S" / "config.yaml").read_text()
    assert summary["models"][-1]["name"].startswith("student")
    cached = (tmp_path / "T" / "teacher_logits.safetensors").read_bytes()
    assert (tmp_path / "S" / "teacher_logits.safetensors").read_bytes() == cached


@pytest.mark.parametrize("mode, round3_teachers", [("join", 4), ("replace", 3)])
def test_rounds_put_the_student_among_the_next_rounds_teachers(tmp_path, mode, round3_teachers):
    from safetensors.torch import load_file

    from teli import pipeline
    from teli.config import build_config

    cfg = build_config(overrides={"teachers.optim.steps": 20, "student.optim.steps": 10, "progress": False,
                                  "out_dir": str(tmp_path), "name": "R", "baseline": False, "rounds": 3, "rounds_mode": mode})
    summary = pipeline.run(cfg)
    names = [m["name"] for m in summary["models"]]
    assert names[-3:] == ["student (TELI-beta, round 1)", "student (TELI-beta, round 2)", "student (TELI-beta, round 3)"]
    run = tmp_path / "R"
    assert (run / "student_round1.safetensors").is_file() and (run / "student_round2.safetensors").is_file()
    assert load_file(run / "teacher_logits.safetensors")["logits"].shape[0] == 2
    assert load_file(run / "teacher_logits_round2.safetensors")["logits"].shape[0] == 3
    assert load_file(run / "teacher_logits_round3.safetensors")["logits"].shape[0] == round3_teachers


def test_rounds_need_an_algorithm_with_teachers(tmp_path, capsys):
    from teli.cli import main

    assert main(["run", "--algorithm", "fixmatch", "--set", "rounds=2", "--out", str(tmp_path), "--quiet"]) == 2
    assert "rounds=2 needs an algorithm with teachers" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
