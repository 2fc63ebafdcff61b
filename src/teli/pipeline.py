"""The Python API behind the CLI: `run`, `train_teachers`, `distill`, `evaluate`.

    teachers (stage 1) -> cached teacher logits on the pool (stage 2) -> TELI student (stage 3),
    plus a supervised-only student of the same architecture and budget for comparison.

Everything that can be wrong with the input (config, data, teacher files) is checked before the run
folder is created, so a refused run leaves nothing behind. Every trained stage checkpoints into
RUN/checkpoints/STAGE (teli.resume); `resume=RUN` loads finished stages and continues the interrupted one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
import yaml
from lightning_fabric import Fabric
from torch import nn

from teli.algorithms import USES_STRONG, USES_TEACHERS, USES_UNLABELLED, build_algorithm, check_algorithm
from teli.checkpoint import atomic_write_text, load_model_state, load_tensors, save_model, save_tensors
from teli.config import ModelConfig, RunConfig, build_config
from teli.data import SSLBatches, SSLData, load_dataset, make_ssl_data, split_pool
from teli.engine import MetricsLog, predict_logits, setup_fabric, train
from teli.errors import TeliError
from teli.fingerprint import config_digest, data_digest, tensor_digest
from teli.labels import pseudo_labels
from teli.models import build_model, check_arch, count_parameters
from teli.report import lambda_diagnostics, pseudo_label_diagnostics, test_scores
from teli.resume import StageCheckpoints
from teli.rundir import create_run_dir, reopen_run_dir
from teli.teachers import Teacher, data_signature, load_teacher, save_teacher, teacher_files, teacher_logits, train_teacher


def prepare_data(cfg: RunConfig, device: torch.device | str = "cpu") -> SSLData:
    d = cfg.data
    dataset = load_dataset(d.dataset, d.data_root, d.download, d.test_fraction, source=d.data, resize=d.resize,
                           channels=d.channels, on_corrupt=d.on_corrupt, hflip=d.hflip, cache=d.cache)
    split_seed = cfg.seed if d.split_seed is None else d.split_seed
    split = split_pool(dataset.y_train, dataset.num_classes, d.labels_per_class, d.val_per_class, split_seed)
    return make_ssl_data(dataset, split).to(device)


def describe_arch(spec: ModelConfig) -> str:
    width = f"w{spec.width}" if spec.width else "w-default"
    return f"{spec.arch}({width},d{spec.depth})"


@dataclass
class Run:
    """An open run: its folder, config, data, device and metrics log."""

    cfg: RunConfig
    dir: Path
    data: SSLData
    fabric: Fabric
    log: MetricsLog
    wall: dict[str, float] = field(default_factory=dict)
    models: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # algorithm-specific diagnostics for summary.json
    allow_change: list[str] = field(default_factory=list)
    given_teachers: list[Teacher] = field(default_factory=list)  # from files or an earlier run, already checked
    _data_digest: str | None = None

    def checkpoints(self, stage: str, cache: torch.Tensor | None = None) -> StageCheckpoints:
        """The checkpoints of one stage, fingerprinted with the config, the data and (students) the teacher cache."""
        if self._data_digest is None:
            self._data_digest = data_digest(self.data)
        tree = self.cfg.model_dump(mode="json")
        fingerprint = {"config": tree, "config_digest": config_digest(tree), "data_digest": self._data_digest,
                       "cache_digest": tensor_digest(cache) if cache is not None else None}
        c = self.cfg.checkpoint
        return StageCheckpoints(self.dir / "checkpoints" / stage, stage, c.every, c.keep, fingerprint, self.allow_change)

    def score(self, name: str, arch: str, model: nn.Module) -> dict:
        row = {"name": name, "arch": arch, **test_scores(predict_logits(model, self.data.x_test, self.data.prepare), self.data.y_test)}
        self.models.append(row)
        return row

    def evaluator(self):
        """Scores on the held-out labelled images during training (never the test set); None without them."""
        if len(self.data.x_val) == 0:
            return None
        return lambda model: {"val_" + k: v for k, v in
                              test_scores(predict_logits(model, self.data.x_val, self.data.prepare), self.data.y_val).items()}


def default_run_name(cfg: RunConfig, kind: str) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return f"{cfg.data.label}-k{cfg.data.labels_per_class}-{kind}-s{cfg.seed}-{stamp}"


def check_inputs(cfg: RunConfig, data: SSLData, sources: list[Path] | None, device: torch.device) -> list[Teacher]:
    """Refuse unknown architectures and teacher files that do not fit the data, before any training;
    return the given teachers, loaded (sidecar, data signature, architecture, weights that fit)."""
    specs = [cfg.student.model] + ([] if sources else list(cfg.teachers.models))
    for spec in specs:
        check_arch(spec.arch)
    return [load_teacher(path, data, device) for path in sources or []]


def open_run(cfg: RunConfig, kind: str, overwrite: bool = False, resume: Path | None = None,
             allow_change: list[str] | None = None, sources: list[Path] | None = None) -> Run:
    fabric = setup_fabric(cfg.accelerator, cfg.precision, cfg.threads, cfg.seed, cfg.deterministic)
    data = prepare_data(cfg, fabric.device)
    given_teachers = check_inputs(cfg, data, sources, fabric.device)
    if resume is not None:
        run_dir = reopen_run_dir(Path(resume), cfg, allow_change or [])
    else:
        run_dir = create_run_dir(Path(cfg.out_dir) / (cfg.name or default_run_name(cfg, kind)), cfg, overwrite)
    return Run(cfg, run_dir, data, fabric, MetricsLog(run_dir / "metrics.jsonl"), allow_change=allow_change or [],
               given_teachers=given_teachers)


def _teacher_sources(cfg: RunConfig) -> list[Path] | None:
    if cfg.teachers.from_files:
        return [Path(p) for p in cfg.teachers.from_files]
    if cfg.teachers.from_run:
        return teacher_files(Path(cfg.teachers.from_run))
    return None


def labelled_batch(run: Run, stage: str, batch_size: int) -> int:
    """The labelled batch a stage draws: the configured size, clamped to the labelled set's size.

    A batch larger than the labelled set is not an error: each step then draws the whole labelled set.
    The config keeps what was asked; summary.json's `labelled_batch` records what each stage used."""
    size = min(batch_size, len(run.data.x_l))
    run.extra.setdefault("labelled_batch", {})[stage] = size
    return size


def stage_teachers(run: Run) -> list[Teacher]:
    """The given teachers (loaded by check_inputs), or `cfg.teachers.models` trained on the labelled set."""
    start = time.perf_counter()
    if run.given_teachers:
        teachers = run.given_teachers
    else:
        cfg = run.cfg
        teachers = []
        for i, spec in enumerate(cfg.teachers.models):
            labelled_batch(run, f"teacher{i + 1}", cfg.teachers.optim.batch_size)  # train_teacher clamps alike
            model = train_teacher(spec, run.data, cfg.teachers.optim, fabric=run.fabric, seed=cfg.seed * 1000 + i + 1,
                                  stage=f"teacher{i + 1}", log=run.log, progress=cfg.progress,
                                  checkpoints=run.checkpoints(f"teacher{i + 1}"))
            teachers.append(Teacher(spec, model))
    for i, teacher in enumerate(teachers):
        teacher.model.eval().requires_grad_(False)
        row = run.score(f"teacher {i + 1}", describe_arch(teacher.spec), teacher.model)
        path = run.dir / "teachers" / f"teacher_{i + 1}.safetensors"
        save_teacher(path, teacher, run.data, row["accuracy"])
    run.wall["teachers"] = time.perf_counter() - start
    return teachers


def reusable_cache(run: Run, teachers: list[Teacher]) -> torch.Tensor | None:
    """The teachers' own run's cached logits, if they are these teachers' on this pool: checked by
    recomputing them on a sample of 64 pool images (`distill` then skips a pass over the pool)."""
    source = run.cfg.teachers.from_run
    path = Path(source) / "teacher_logits.safetensors" if source else None
    if path is None or not path.is_file():
        return None
    cached = load_tensors(path)["logits"].to(run.fabric.device)
    if cached.shape != (len(teachers), len(run.data.x_u), run.data.num_classes):
        return None
    probe = torch.linspace(0, len(run.data.x_u) - 1, min(64, len(run.data.x_u))).long().to(run.fabric.device)
    fresh = torch.stack([predict_logits(t.model, run.data.x_u[probe], run.data.prepare) for t in teachers])
    return cached if torch.allclose(fresh, cached[:, probe], rtol=1e-4, atol=1e-4) else None


def stage_cache(run: Run, teachers: list[Teacher], round_: int = 1) -> torch.Tensor:
    start = time.perf_counter()
    logits = reusable_cache(run, teachers) if round_ == 1 else None
    if logits is None:
        logits = teacher_logits([t.model for t in teachers], run.data)
    suffix = "" if round_ == 1 else f"_round{round_}"
    save_tensors(run.dir / f"teacher_logits{suffix}.safetensors", {"logits": logits})
    run.wall["teacher_cache" + suffix] = time.perf_counter() - start
    return logits


def _student_meta(run: Run, kind: str, row: dict) -> dict:
    return {"kind": kind, "arch": run.cfg.student.model.model_dump(), **data_signature(run.data), "test_accuracy": row["accuracy"]}


def student_label(cfg: RunConfig, round_: int | None = None) -> str:
    method = f"TELI-{cfg.teli.lambda_mode}" if cfg.algorithm == "teli" else cfg.algorithm
    return f"student ({method}{f', round {round_}' if round_ else ''})"


def student_optim(cfg: RunConfig):
    """The student's optimizer settings; FixMatch evaluates an EMA of its student (baselines.fixmatch_ema)
    unless student.optim.ema_decay says otherwise."""
    optim = cfg.student.optim
    if cfg.algorithm == "fixmatch" and optim.ema_decay is None and cfg.baselines.fixmatch_ema is not None:
        optim = optim.model_copy(update={"ema_decay": cfg.baselines.fixmatch_ema})
    return optim


def student_batches(cfg: RunConfig, data: SSLData, seed: int | None = None) -> SSLBatches:
    """The batches `cfg.algorithm` trains on: unlabelled images if it uses them, their strong view if it
    needs one (USES_STRONG) or data.strong_augment asks for it."""
    name, optim = cfg.algorithm, cfg.student.optim
    unlabelled = cfg.student.unlabelled_batch_size if name in USES_UNLABELLED else 0
    return SSLBatches(data, min(optim.batch_size, len(data.x_l)), unlabelled, seed=cfg.seed if seed is None else seed,
                      strong=unlabelled > 0 and (cfg.data.strong_augment or name in USES_STRONG))


def train_student(run: Run, algorithm_name: str, logits: torch.Tensor | None, label: str, file: str,
                  stage: str | None = None) -> nn.Module:
    """Train one student with `algorithm_name` (same architecture, initial weights and steps for every
    algorithm, so students compare fairly), score it on the test set and save it as `file`."""
    stage = stage or algorithm_name
    cfg = run.cfg.model_copy(update={"algorithm": algorithm_name})
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.student.model, run.data.input_shape, run.data.num_classes).to(run.fabric.device)
    optim = student_optim(cfg)
    batches = student_batches(cfg, run.data)
    labelled_batch(run, stage, optim.batch_size)  # records the clamped size in summary.json
    algorithm = build_algorithm(algorithm_name, model, logits, cfg, batches.rng, run.data)
    result = train(algorithm, batches, optim, fabric=run.fabric, stage=stage, log=run.log, evaluate=run.evaluator(),
                   progress=cfg.progress, checkpoints=run.checkpoints(stage, cache=logits))
    row = run.score(label, describe_arch(cfg.student.model), result.model)
    if hasattr(algorithm, "head"):  # the meta-learned lambda head: its weights and skill on the pool
        labels = algorithm.labels
        save_model(run.dir / "lambda_head.safetensors", algorithm.head, {"kind": "lambda_head", **data_signature(run.data)})
        hidden = run.data.y_u_hidden[labels.disagree] if run.data.y_u_hidden is not None else None
        run.extra["lambda_head"] = lambda_diagnostics(algorithm.pool_weights()[labels.disagree], labels.preds[:, labels.disagree], hidden)
    save_model(run.dir / file, result.model, _student_meta(run, file.split(".")[0], row))
    run.wall[stage] = time.perf_counter() - start
    return result.model


def stage_student(run: Run, logits: torch.Tensor | None, round_: int = 1) -> nn.Module:
    """The student of `cfg.algorithm`; with rounds, round r's is saved as student_round{r} and the last
    round's as student.safetensors."""
    cfg = run.cfg
    if cfg.rounds == 1:
        return train_student(run, cfg.algorithm, logits, student_label(cfg), "student.safetensors")
    file = "student.safetensors" if round_ == cfg.rounds else f"student_round{round_}.safetensors"
    stage = cfg.algorithm if round_ == 1 else f"{cfg.algorithm}-round{round_}"
    return train_student(run, cfg.algorithm, logits, student_label(cfg, round_), file, stage)


def next_teachers(teachers: list[Teacher], student: nn.Module, cfg: RunConfig, round_: int) -> list[Teacher]:
    """Round r+1's teachers (Noisy Student): the student joins them, or replaces the previous round's student."""
    student.eval().requires_grad_(False)
    joined = Teacher(cfg.student.model, student)
    if cfg.rounds_mode == "replace" and round_ > 2:
        return teachers[:-1] + [joined]
    return teachers + [joined]


def stage_baseline(run: Run) -> nn.Module:
    """The supervised-only student: labelled images only, otherwise as the student."""
    return train_student(run, "supervised", None, "student (supervised only)", "supervised.safetensors")


def summarize(run: Run, logits: torch.Tensor | None) -> dict:
    """What a run reports: its models' test scores, wall times and the pseudo-label diagnostics of the
    (last round's) teachers."""
    cfg = run.cfg
    summary = {
        "run_dir": str(run.dir),
        "dataset": cfg.data.label,
        "labels_per_class": cfg.data.labels_per_class,
        "seed": cfg.seed,
        "algorithm": cfg.algorithm,
        "lambda_mode": cfg.teli.lambda_mode,
        "student_parameters": count_parameters(build_model(cfg.student.model, run.data.input_shape, run.data.num_classes)),
        "models": run.models,
        "wall_seconds": {k: round(v, 2) for k, v in run.wall.items()},
    }
    if logits is not None:
        labels = pseudo_labels(logits, cfg.teli.temperature, cfg.teli.threshold, cfg.teli.use_mask)
        summary["pseudo_labels"] = pseudo_label_diagnostics(labels, run.data.y_u_hidden)
    return summary


def finish(run: Run, logits: torch.Tensor | None, started: float) -> dict:
    run.wall["total"] = time.perf_counter() - started
    summary = {**summarize(run, logits), **run.extra}
    summary["lambda_over_training"] = lambda_trace(run.dir / "metrics.jsonl", run.cfg.algorithm)
    atomic_write_text(run.dir / "summary.json", json.dumps(summary, indent=2))
    run.log.close()
    return summary


def lambda_trace(metrics: Path, stage: str) -> list[dict]:
    """Mean and spread of lambda on disagreements per logging interval, from the metrics log."""
    if not metrics.is_file():
        return []
    records = (json.loads(line) for line in metrics.read_text().splitlines() if line.strip())
    return [{"step": r["step"], "mean": r["lambda_mean"], **({"std": r["lambda_std"]} if "lambda_std" in r else {})}
            for r in records if r.get("stage") == stage and "lambda_mean" in r]


def run(cfg: RunConfig, overwrite: bool = False, resume: Path | None = None, allow_change: list[str] | None = None) -> dict:
    """The whole pipeline: teachers and cache (for algorithms that use them), the student of `cfg.algorithm`
    and (if cfg.baseline) the supervised-only student.
    With `resume`, continue that interrupted run folder (finished stages are loaded from their checkpoints)."""
    started = time.perf_counter()
    check_algorithm(cfg.algorithm)
    if cfg.rounds > 1 and cfg.algorithm not in USES_TEACHERS:
        raise TeliError(f"rounds={cfg.rounds} needs an algorithm with teachers (teli, pseudo-label, ensemble-kd), "
                        f"not '{cfg.algorithm}': set rounds=1")
    sources = _teacher_sources(cfg)
    kind = f"teli-{cfg.teli.lambda_mode}" if cfg.algorithm == "teli" else cfg.algorithm
    r = open_run(cfg, kind, overwrite, resume, allow_change, sources)
    logits = None
    if cfg.algorithm in USES_TEACHERS:  # FixMatch and supervised-only need no teachers
        teachers = stage_teachers(r)
        logits = stage_cache(r, teachers)
    if cfg.baseline and cfg.algorithm != "supervised":  # the student already is the supervised-only one
        stage_baseline(r)
    student = stage_student(r, logits)
    for round_ in range(2, cfg.rounds + 1):
        teachers = next_teachers(teachers, student, cfg, round_)
        logits = stage_cache(r, teachers, round_)
        student = stage_student(r, logits, round_)
    return finish(r, logits, started)


def train_teachers(cfg: RunConfig, overwrite: bool = False, resume: Path | None = None,
                   allow_change: list[str] | None = None) -> dict:
    """Stage 1 alone: a run folder holding trained teachers for `distill --teachers RUN`."""
    started = time.perf_counter()
    r = open_run(cfg, "teachers", overwrite, resume, allow_change)
    teachers = stage_teachers(r)
    return finish(r, stage_cache(r, teachers), started)


def config_of(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise TeliError(f"{run_dir} is not a teli run folder (no config.yaml): give the folder `teli run` printed")
    return build_config(yaml.safe_load(path.read_text()), source=str(path))


def distill(cfg: RunConfig, teachers_run: Path, overwrite: bool = False, resume: Path | None = None,
            allow_change: list[str] | None = None) -> dict:
    """Stages 2 and 3 with the teachers of an earlier run, on that run's data split (the student's own
    data settings, such as strong augmentation, stay as given)."""
    teachers_cfg = config_of(teachers_run)
    split_seed = teachers_cfg.data.split_seed if teachers_cfg.data.split_seed is not None else teachers_cfg.seed
    data = teachers_cfg.data.model_copy(update={"split_seed": split_seed, "strong_augment": cfg.data.strong_augment})
    teachers = cfg.teachers.model_copy(update={"from_run": str(teachers_run)})
    return run(cfg.model_copy(update={"data": data, "teachers": teachers}), overwrite, resume, allow_change)


def evaluate(run_dir: Path) -> dict:
    """Re-score a finished run's saved models on the test set (and its pseudo-label diagnostics)."""
    run_dir = Path(run_dir)
    cfg = config_of(run_dir)
    fabric = setup_fabric(cfg.accelerator, cfg.precision, cfg.threads, cfg.seed)
    data = prepare_data(cfg, fabric.device)
    r = Run(cfg, run_dir, data, fabric, MetricsLog(None))
    started = time.perf_counter()
    for i, path in enumerate(teacher_files(run_dir)):
        teacher = load_teacher(path, data, fabric.device)
        r.score(f"teacher {i + 1}", describe_arch(teacher.spec), teacher.model)
    final = student_label(cfg, cfg.rounds if cfg.rounds > 1 else None)
    for file, name in [("supervised.safetensors", "student (supervised only)"), ("student.safetensors", final)]:
        if (run_dir / file).is_file():
            model = build_model(cfg.student.model, data.input_shape, data.num_classes).to(fabric.device)
            load_model_state(run_dir / file, model)
            r.score(name, describe_arch(cfg.student.model), model)
    cache = run_dir / ("teacher_logits.safetensors" if cfg.rounds == 1 else f"teacher_logits_round{cfg.rounds}.safetensors")
    logits = load_tensors(cache)["logits"].to(fabric.device) if cache.is_file() else None
    r.wall["evaluate"] = time.perf_counter() - started
    return summarize(r, logits)
