"""Typed, validated run configuration: YAML in, command-line overrides on top, resolved YAML out.

Every section forbids unknown keys, so a typo is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from teli.errors import TeliError


class Section(BaseModel):
    # allow_inf_nan=False: a bound like gt=0 lets inf through (tau = inf makes every pseudo-label uniform)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(Section):
    dataset: str = "digits"
    data_root: str = "data"
    download: bool = False
    labels_per_class: int = Field(5, ge=1, description="k labelled images per class, drawn stratified")
    val_per_class: int = Field(0, ge=0, description="held-out labelled images per class (model selection / meta)")
    test_fraction: float = Field(0.3, gt=0, lt=1, description="test share for datasets without an official test split")
    split_seed: int | None = Field(None, description="seed of the labelled draw; None: the run's seed")
    data: str | None = Field(None, description="your own data instead of `dataset`: folder:PATH or npz:PATH")
    on_corrupt: Literal["skip", "error"] = Field("error", description="an unreadable image in folder data: stop, or skip and count")
    resize: int | None = Field(None, ge=1, description="resize every image to resize x resize (needed for mixed sizes)")
    channels: Literal[1, 3] | None = Field(None, description="convert to grey (1) or RGB (3); None: as stored")
    hflip: bool | None = Field(None, description="is a horizontal flip label-preserving; None: the dataset's default")
    strong_augment: bool = Field(False, description="RandAugment + cutout on the student's unlabelled input")
    cache: bool = Field(True, description="cache decoded images under data_root/.teli-cache (folder data, Tiny-ImageNet)")

    @field_validator("data")
    @classmethod
    def _source_form(cls, data: str | None) -> str | None:
        if data is not None and (data.partition(":")[0] not in ("folder", "npz") or not data.partition(":")[2]):
            raise ValueError("it must be folder:PATH or npz:PATH")
        return data

    @property
    def label(self) -> str:
        """The dataset's name in run names and summaries: `dataset`, or the user data's file or folder name."""
        if self.data is None:
            return self.dataset
        kind, _, path = self.data.partition(":")
        return (Path(path).stem if kind == "npz" else Path(path).name) or self.data


class ModelConfig(Section):
    arch: str = "cnn"
    width: int | None = Field(None, ge=1, description="base channels / units; None: the architecture's default")
    depth: int = Field(2, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)


class OptimConfig(Section):
    steps: int = Field(500, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.03, allow_inf_nan=True)  # non-finite: refused by _positive_lr, with its own message
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    ema_decay: float | None = Field(None, gt=0, lt=1)
    eval_every: int = Field(100, ge=1)
    log_every: int = Field(25, ge=1)
    on_nonfinite: Literal["stop", "skip"] = Field("stop", description="a non-finite loss: stop (keep the last good "
                                                   "checkpoint) or skip that step's update and count it")

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, lr: float) -> float:
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError("the learning rate must be a positive finite number")
        return lr


def _default_teachers() -> list[ModelConfig]:
    # Diversity is the point of the ensemble: different depth and width, hence different errors.
    return [ModelConfig(arch="cnn", width=32, depth=2), ModelConfig(arch="mlp", width=256, depth=2)]


class TeachersConfig(Section):
    models: list[ModelConfig] = Field(default_factory=_default_teachers)
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(steps=300, batch_size=32, lr=0.03, eval_every=100))
    from_run: str | None = Field(None, description="reuse the teachers of an earlier run folder")
    from_files: list[str] | None = Field(None, description="teacher .safetensors files (each with its .json sidecar)")

    @field_validator("models")
    @classmethod
    def _at_least_two(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        if len(models) < 2:
            raise ValueError("TELI needs at least two teachers")
        return models


class StudentConfig(Section):
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(arch="cnn", width=32, depth=2))
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(steps=600, batch_size=32, lr=0.03))
    unlabelled_batch_size: int = Field(128, ge=1)


class TeliConfig(Section):
    threshold: float = Field(0.6, ge=0, le=1, description="teachers' confidence needed to use an image")
    use_mask: bool = True
    temperature: float = Field(1.0, gt=0, description="tau in softmax(z / tau) for the teachers")
    labelled_weight: float = Field(1.0, ge=0, description="w_l")
    gamma: float = Field(0.1, ge=0, description="weight of the mixup term on disagreements")
    lambda_mode: Literal["fixed", "beta", "meta"] = "beta"
    lambda_value: float = Field(0.5, ge=0, le=1, description="lambda for lambda_mode=fixed")
    alpha: float = Field(0.1, gt=0, description="Beta(alpha, alpha) / Dirichlet(alpha) concentration")
    lambda_per: Literal["batch", "sample"] = "batch"
    kd_weight: float = Field(0.0, ge=0, description="weight of soft-label distillation on confident images")
    kd_temperature: float = Field(4.0, gt=0)
    meta_method: Literal["fast", "exact"] = Field("fast", description="lambda head's hypergradient: finite difference or second order")
    meta_source: Literal["labelled", "val"] = Field("labelled", description="meta batch: the labelled batch or held-out labelled images")
    meta_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the lambda head")
    meta_every: int = Field(1, ge=1, description="update the lambda head every k student steps (k > 1 trades head updates for speed)")
    meta_hidden: int = Field(32, ge=1)
    meta_dropout: float = Field(0.2, ge=0, lt=1)
    meta_fd_eps: float = Field(1e-3, gt=0, description="finite-difference step along v/|v|")


class BaselinesConfig(Section):
    """Settings of the comparison methods (teli.algorithms: pseudo-label, ensemble-kd, fixmatch)."""

    teacher: int = Field(0, ge=0, description="pseudo-label: index of the one teacher whose confident labels are used")
    kd_temperature: float = Field(4.0, gt=0, description="ensemble-kd: T of the tempered teacher mean and the student")
    kd_weight: float = Field(1.0, ge=0, description="ensemble-kd: weight of the distillation term")
    fixmatch_threshold: float = Field(0.95, ge=0, le=1, description="fixmatch: confidence of the weak view needed for a pseudo-label")
    fixmatch_weight: float = Field(1.0, ge=0, description="fixmatch: lambda_u, weight of the unlabelled term")
    fixmatch_ema: float | None = Field(0.999, gt=0, lt=1, description="fixmatch: EMA decay of the evaluated student when "
                                       "student.optim.ema_decay is unset (None: no EMA)")


class CheckpointConfig(Section):
    every: int = Field(100, ge=0, description="resumable checkpoint every N steps of each stage (0: only at the end "
                                              "of a stage and on SIGTERM/SIGINT)")
    keep: int = Field(2, ge=1, description="checkpoints kept per stage (the newest)")


class RunConfig(Section):
    algorithm: str = Field("teli", description="how the student learns (see teli.algorithms.ALGORITHMS)")
    seed: int = 0
    out_dir: str = "runs"
    name: str | None = None
    accelerator: str = "cpu"
    precision: str = "32-true"
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: measured best for this machine")
    deterministic: bool = False
    baseline: bool = Field(True, description="also train a supervised-only student for comparison")
    rounds: int = Field(1, ge=1, description="Noisy-Student rounds: the student of round r teaches in round r+1")
    rounds_mode: Literal["join", "replace"] = Field(
        "join", description="join: every round's student joins the teachers; replace: only the latest student sits beside them")
    progress: bool = True
    data: DataConfig = Field(default_factory=DataConfig)
    teachers: TeachersConfig = Field(default_factory=TeachersConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    teli: TeliConfig = Field(default_factory=TeliConfig)
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)


# ---------------------------------------------------------------------------------------------
# Loading, overriding, saving


def _describe(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{key}' in {source}: remove it or check its spelling (see `teli run --help`)"
    given = first.get("input")
    given_text = "" if isinstance(given, dict) else f" = {given!r}"
    return f"bad config value {key}{given_text} in {source}: {first['msg']}"


def set_dotted(tree: dict, dotted_key: str, value: Any) -> None:
    """Set tree['a']['b'] = value for 'a.b', creating sections as needed."""
    *parents, leaf = dotted_key.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise TeliError(f"config key '{dotted_key}': '{part}' is a value, not a section")
        node = child
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'student.optim.lr=0.1' -> ('student.optim.lr', 0.1); the value is read as YAML."""
    if "=" not in text:
        raise TeliError(f"override '{text}' is not KEY=VALUE (example: --set teli.gamma=0.2)")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise TeliError(f"override '{text}': the value is not valid YAML") from None


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TeliError(f"config file {path} not found: check the path")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise TeliError(f"config file {path} is not valid YAML{where}: fix its syntax") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise TeliError(f"config file {path} must hold a mapping of sections (data:, teachers:, ...)")
    return tree


def _merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, section by section (values and lists replace, sections merge)."""
    merged = dict(base)
    for key, value in over.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def build_config(tree: dict | None = None, overrides: dict[str, Any] | None = None, source: str = "the config") -> RunConfig:
    """Validate a config tree after applying dotted-key overrides (which win over the tree).

    Both are applied on top of the default config, so setting one key of a section keeps the
    section's other defaults (student.optim.steps alone must not reset student.optim.batch_size
    to the bare OptimConfig default).
    """
    tree = _merge(RunConfig().model_dump(), tree or {})
    for key, value in (overrides or {}).items():
        set_dotted(tree, key, value)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise TeliError(_describe(err, source)) from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    tree = read_yaml(path) if path else {}
    source = f"{path} / command line" if path else "the command line"
    return build_config(tree, overrides, source)


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
