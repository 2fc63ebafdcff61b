"""Config: overrides of one key keep the other defaults of their section; resolved YAML round-trips."""

from __future__ import annotations

import pytest
import yaml

from teli.config import RunConfig, build_config, load_config, parse_override, to_yaml
from teli.errors import TeliError


def test_overriding_one_key_keeps_the_sections_other_defaults():
    default = RunConfig()
    cfg = build_config(overrides={"student.optim.steps": 7, "teachers.optim.steps": 9, "student.model.depth": 3})
    assert cfg.student.optim.steps == 7 and cfg.teachers.optim.steps == 9 and cfg.student.model.depth == 3
    # everything else in those sections is as in the default config (not the bare field defaults)
    assert cfg.student.optim.model_dump(exclude={"steps"}) == default.student.optim.model_dump(exclude={"steps"})
    assert cfg.teachers.optim.model_dump(exclude={"steps"}) == default.teachers.optim.model_dump(exclude={"steps"})
    assert cfg.student.model.width == default.student.model.width
    assert cfg.teachers.models == default.teachers.models


def test_yaml_section_keeps_other_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("student:\n  optim:\n    lr: 0.1\n")
    cfg = load_config(path)
    assert cfg.student.optim.lr == 0.1
    assert cfg.student.optim.batch_size == RunConfig().student.optim.batch_size
    assert cfg.student.optim.steps == RunConfig().student.optim.steps


def test_a_list_value_replaces_the_default_list():
    cfg = build_config(overrides={"teachers.models": [{"arch": "mlp"}, {"arch": "cnn", "depth": 1}, {"arch": "cnn"}]})
    assert [m.arch for m in cfg.teachers.models] == ["mlp", "cnn", "cnn"]
    assert cfg.teachers.models[1].depth == 1


def test_command_line_wins_over_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("teli:\n  gamma: 0.3\n  threshold: 0.4\n")
    cfg = load_config(path, {"teli.gamma": 0.5})
    assert cfg.teli.gamma == 0.5 and cfg.teli.threshold == 0.4


def test_resolved_yaml_round_trips():
    cfg = build_config(overrides={"teli.gamma": 0.25, "student.optim.steps": 11, "seed": 3})
    assert build_config(yaml.safe_load(to_yaml(cfg))) == cfg


def test_parse_override_reads_yaml_values():
    assert parse_override("student.optim.lr=0.1") == ("student.optim.lr", 0.1)
    assert parse_override("teli.use_mask=false") == ("teli.use_mask", False)
    assert parse_override("name=") == ("name", None)
    with pytest.raises(TeliError, match="not KEY=VALUE"):
        parse_override("teli.gamma")


def test_value_where_a_section_is_expected():
    with pytest.raises(TeliError, match="'teli' is a value"):
        build_config({"teli": 3}, {"teli.gamma": 0.2})
    with pytest.raises(TeliError, match="teli"):
        build_config({"teli": 3})
