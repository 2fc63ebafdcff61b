"""`teli bench`: the results tables of the README, from runs anyone can repeat.

A suite is a base config (a preset file from configs/ and dotted overrides) and a list of methods
(an algorithm and its overrides), run over seeds. Each (method, seed) cell is a normal teli run
folder under OUT/SUITE/ (OUT/SUITE-time/ for --budget time), so a finished cell (its summary.json
exists) is not rerun: an interrupted bench resumes where it stopped. A finished cell made with other
settings than the bench would use now is refused, naming the key. Per seed the teachers are trained
once (OUT/SUITE/teachers-sSEED) and shared by every method that uses teachers. The repository keeps
each cell's summary.json and config.yaml (not its weights), so a suite run over several sessions or
machines goes on where it stopped; teachers are retrained when needed and must score as before.

Budgets: `steps` gives every method the suite's student steps; `time` scales each method's steps by
its measured step time so that its training takes as long as TELI-beta's (the calibration is
measured once, interleaved, on seed 0's data and teachers, and kept in calibration.json).
`teli bench --suite speed` is the speed suite (teli.speed).

    teli bench --suite digits --seeds 0 1 2                 # all 11 methods, minutes on 2 vCPUs
    teli bench --suite digits --budget time                 # equal wall time instead of equal steps
    teli bench --suite fashion-mnist-10 --seeds 0 1 2       # about an hour on 2 vCPUs (not run in tests)
    teli bench --suite cifar10-40 --set accelerator=cuda --set data.download=true   # GPU: the presets' budgets
    teli bench --suite digits --methods fixmatch TELI-beta --set student.optim.steps=50   # a subset, shrunk
"""

from __future__ import annotations

import fnmatch
import json
import statistics
from pathlib import Path

import yaml

from teli.config import RunConfig, build_config, read_yaml
from teli.errors import TeliError
from teli.fingerprint import HARMLESS, config_diff, flatten
from teli.pipeline import distill, train_teachers

CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # the repository's presets

# method -> overrides (with "algorithm") on top of the suite's base config
METHODS: dict[str, dict] = {
    "supervised-only": {"algorithm": "supervised"},
    "pseudo-label": {"algorithm": "pseudo-label"},
    "ensemble-kd": {"algorithm": "ensemble-kd"},
    "fixmatch": {"algorithm": "fixmatch"},
    "TELI-fixed": {"algorithm": "teli", "teli.lambda_mode": "fixed"},
    "TELI-beta": {"algorithm": "teli", "teli.lambda_mode": "beta"},
    "TELI-meta": {"algorithm": "teli", "teli.lambda_mode": "meta"},
    "TELI-beta+strong": {"algorithm": "teli", "teli.lambda_mode": "beta", "data.strong_augment": True},
    "TELI-beta+strong+2rounds": {"algorithm": "teli", "teli.lambda_mode": "beta", "data.strong_augment": True, "rounds": 2},
    # two more levers on top of strong augmentation: the meta-learned lambda, and soft-label distillation
    # of the teachers' tempered mean on every confident image
    "TELI-meta+strong": {"algorithm": "teli", "teli.lambda_mode": "meta", "data.strong_augment": True},
    "TELI-beta+strong+kd": {"algorithm": "teli", "teli.lambda_mode": "beta", "data.strong_augment": True, "teli.kd_weight": 1.0},
}
REFERENCE = "TELI-beta"  # --budget time matches every method's wall time to this one's

FASHION_CPU = {"student.model.width": 32, "student.optim.steps": 150, "student.optim.warmup_steps": 10,
               "baselines.fixmatch_ema": 0.97}
SUITES: dict[str, dict] = {
    # minutes on 2 vCPUs: 600 student steps of the default cnn(w32,d2). FixMatch's EMA decay is 0.99 here:
    # 0.999 averages over ~1000 steps, longer than the whole budget, and would mostly report the initial weights.
    "digits": {"config": None, "base": {"baselines.fixmatch_ema": 0.99}, "methods": METHODS},
    # CPU budgets: the preset's data, teachers and batch shape (64 labelled + 256 unlabelled images), 150 student
    # steps instead of the preset's 3000, and a cnn(w32,d3) student (0.29 M parameters) instead of the preset's
    # cnn(w64,d3) (1.1 M, ~4x the compute): 2 suites x 3 seeds x 11 methods fit in about two hours on 2 vCPUs,
    # the slowest cell (FixMatch, three views; TELI with 2 rounds) a few minutes. FixMatch's EMA decay is 0.97
    # here (a ~33-step average over a 150-step budget; warmed up as teli.engine.warmup_ema does).
    "fashion-mnist-10": {"config": "fashion-mnist-10.yaml", "methods": METHODS, "base": FASHION_CPU},
    "fashion-mnist-100": {"config": "fashion-mnist-100.yaml", "methods": METHODS, "base": FASHION_CPU},
    # for GPUs (documented, not run here): the presets as they are, FixMatch with EMA 0.999 (the presets set ema_decay).
    "cifar10-40": {"config": "cifar10-4.yaml", "base": {}, "methods": METHODS},
    "cifar10-250": {"config": "cifar10-25.yaml", "base": {}, "methods": METHODS},
}


def suite_tree(suite: str) -> dict:
    spec = SUITES[suite]
    if spec["config"] is None:
        return {}
    path = CONFIGS / spec["config"]
    if not path.is_file():
        raise TeliError(f"suite '{suite}' needs the preset {path} (run teli bench from a checkout of the repository)")
    return read_yaml(path)


def _summary(folder: Path) -> dict | None:
    path = folder / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


# Keys a finished cell may differ in from the config the bench would use now: those that change no result
# (where it lies, logging, checkpoints) and what `distill` fills in from the teachers' run.
CELL_FREE = (*HARMLESS, "data.split_seed", "teachers.from_run")


def check_cell(folder: Path, cfg: RunConfig, only: tuple[str, ...] = ("",)) -> None:
    """A finished cell is reused only if it was made with the settings the bench would use now (of those
    starting with one of `only`: the teachers depend on the seed, the data and their own section)."""
    saved = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    now = cfg.model_dump(mode="json")
    for key in config_diff(saved, now):
        if not any(fnmatch.fnmatchcase(key, free) for free in CELL_FREE) and key.startswith(only):
            there, here = flatten(saved).get(key, "<absent>"), flatten(now).get(key, "<absent>")
            raise TeliError(f"{folder} was run with {key}={there!r}, the bench now asks for {here!r}: "
                            f"delete that folder to rerun the cell, or give another --out")


def _run_cell(folder: Path, cfg: RunConfig, make) -> dict:
    done = _summary(folder)
    if done is not None:
        check_cell(folder, cfg)
        return done
    make(overwrite=folder.exists())  # a folder without summary.json is an interrupted cell: redo it
    return _summary(folder)


TEACHER_KEYS = ("seed", "data.", "teachers.", "accelerator", "precision", "deterministic")


def _teacher_scores(summary: dict) -> list[float]:
    return [m["accuracy"] for m in summary["models"] if m["name"].startswith("teacher")]


def _teachers_cell(folder: Path, cfg: RunConfig, needed: bool) -> dict:
    """The seed's teachers. The repository keeps each cell's summary.json and config.yaml, not its weights:
    in a fresh checkout the teachers are trained again when a cell still needs them, and must score
    exactly what the finished cells' teachers scored (same code, seed and library: the same weights)."""
    done = _summary(folder)
    if done is None:
        train_teachers(cfg, overwrite=folder.exists())  # a folder without summary.json is an interrupted cell
        return _summary(folder)
    check_cell(folder, cfg, only=TEACHER_KEYS)
    if not needed or any((folder / "teachers").glob("teacher_*.safetensors")):
        return done
    train_teachers(cfg, overwrite=True)
    fresh = _summary(folder)
    if _teacher_scores(fresh) != _teacher_scores(done):
        raise TeliError(f"the teachers in {folder} were trained again (their weights are not kept in the repository) and "
                        f"score {_teacher_scores(fresh)}, not the {_teacher_scores(done)} the finished cells were made with "
                        f"(another machine or library version?): delete {folder.parent} to rerun the whole suite here")
    return fresh


def cell_config(suite: str, method: str, seed: int, root: Path, base_overrides: dict | None = None,
                steps: int | None = None) -> RunConfig:
    spec = SUITES[suite]
    overrides = {**spec["base"], **(base_overrides or {}), **spec["methods"][method], "seed": seed, "out_dir": str(root),
                 "progress": False, "baseline": False, "name": f"{method}-s{seed}"}
    if steps is not None:
        overrides["student.optim.steps"] = steps
    return build_config(suite_tree(suite), overrides, f"bench suite {suite}")


def run_suite(suite: str, seeds: list[int], out: Path, base_overrides: dict | None = None, budget: str = "steps",
              methods: list[str] | None = None) -> dict:
    if suite == "speed":
        from teli.speed import run_speed_suite

        return run_speed_suite(Path(out), base_overrides)
    if suite not in SUITES:
        raise TeliError(f"unknown bench suite '{suite}': choose one of {', '.join(sorted([*SUITES, 'speed']))}")
    if budget not in ("steps", "time"):
        raise TeliError(f"--budget must be steps or time, not {budget!r}")
    names = methods or list(SUITES[suite]["methods"])
    unknown = [m for m in names if m not in SUITES[suite]["methods"]]
    if unknown:
        raise TeliError(f"unknown method(s) {', '.join(unknown)}: choose from {', '.join(SUITES[suite]['methods'])}")
    teachers_root = Path(out) / suite
    root = teachers_root if budget == "steps" else Path(out) / f"{suite}-time"
    cells: dict[str, dict[int, dict]] = {}
    suite_steps = {m: cell_config(suite, m, seeds[0], root, base_overrides).student.optim.steps for m in names}
    calibration = saved_calibration(root) if budget == "time" else None
    if calibration is not None and not all(m in calibration["steps"] for m in names):
        calibration = None  # a method is missing: calibrate() measures it, once the teachers are there
    steps = {m: calibration["steps"][m] for m in names} if calibration else suite_steps

    def folder_of(method: str, seed: int) -> Path:
        # a time-budget cell that keeps the suite's steps (the reference method) is the same run as the
        # equal-steps cell, but for its out_dir: that one is reused when it exists (once the steps are known)
        same = teachers_root / f"{method}-s{seed}"
        if root != teachers_root and calibration is not None and steps[method] == suite_steps[method] \
                and _summary(same) is not None:
            return same
        return root / f"{method}-s{seed}"

    for seed in seeds:
        base = cell_config(suite, REFERENCE, seed, teachers_root, base_overrides)
        teachers_dir = teachers_root / f"teachers-s{seed}"
        teachers_cfg = base.model_copy(update={"name": teachers_dir.name})
        uncalibrated = budget == "time" and calibration is None
        pending = uncalibrated or any(_summary(folder_of(m, seed)) is None for m in names)
        cells.setdefault("teachers", {})[seed] = _teachers_cell(teachers_dir, teachers_cfg, pending)
        if budget == "time" and calibration is None:
            calibration = calibrate(suite, names, root, teachers_dir, base_overrides)
            steps = {m: calibration["steps"][m] for m in names}
        for method in names:
            cfg = cell_config(suite, method, seed, root, base_overrides, steps[method])
            cells.setdefault(method, {})[seed] = _run_cell(folder_of(method, seed), cfg,
                                                           lambda overwrite, cfg=cfg: distill(cfg, teachers_dir, overwrite))
    results = {"suite": suite, "seeds": seeds, "budget": budget, "steps": steps, "calibration": calibration,
               "rows": _rows(cells, seeds, steps)}
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.json").write_text(json.dumps(results, indent=2))
    (root / "results.md").write_text(markdown_table(results))
    plot_accuracy_vs_time(results, root / "accuracy_vs_time.png")
    return results


def calibrate(suite: str, names: list[str], root: Path, teachers_dir: Path, base_overrides: dict | None) -> dict:
    """Steps per method for equal wall time, from an interleaved measurement of each method's step time
    (teli.speed.step_times); kept in ROOT/calibration.json so a resumed bench uses the same steps. A method
    added later is measured then, interleaved with the reference again, and added to the file."""
    old = saved_calibration(root)
    if old is not None and all(m in old["steps"] for m in names):
        return old
    from teli.speed import load_teachers_run, step_times

    reference = old["reference"] if old else (REFERENCE if REFERENCE in names else names[0])
    measure = list(dict.fromkeys([reference, *(m for m in names if old is None or m not in old["steps"])]))
    cfgs = {m: cell_config(suite, m, 0, root, base_overrides) for m in measure}
    data, logits = load_teachers_run(teachers_dir)
    times = step_times(cfgs, data, logits, steps=5, repeats=5)
    # a budget step of a method with R rounds is R student steps (each round trains `steps` steps)
    cost = {m: t * cfgs[m].rounds for m, t in times.items()}
    ref_steps = cfgs[reference].student.optim.steps
    steps = {m: max(1, round(ref_steps * cost[reference] / c)) for m, c in cost.items()}
    calibration = {"reference": reference,
                   "seconds_per_step": {**(old or {}).get("seconds_per_step", {}), **times},
                   "steps": {**steps, **(old or {}).get("steps", {})},
                   "how": "median of 5 interleaved blocks of 5 steps per method (after 2 warm-up steps), seed 0's data "
                          "and teachers; steps = reference steps x reference step time / (method step time x rounds)"}
    root.mkdir(parents=True, exist_ok=True)
    (root / "calibration.json").write_text(json.dumps(calibration, indent=2))
    return calibration


def saved_calibration(root: Path) -> dict | None:
    path = root / "calibration.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _model(summary: dict, prefix: str) -> dict | None:
    """The last model row named `prefix...`: for students, the final one (after any rounds)."""
    return next((m for m in reversed(summary["models"]) if m["name"].startswith(prefix)), None)


def _rows(cells: dict[str, dict[int, dict]], seeds: list[int], steps: dict[str, int]) -> list[dict]:
    rows = []
    teachers = cells["teachers"]
    n_teachers = len([m for m in teachers[seeds[0]]["models"] if m["name"].startswith("teacher")])
    for t in range(1, n_teachers + 1):
        rows.append(_row(f"teacher {t}", "teacher", [_model(teachers[s], f"teacher {t}") for s in seeds],
                         [teachers[s] for s in seeds], "teachers", None))
    for method in (k for k in cells if k != "teachers"):
        summaries = [cells[method][s] for s in seeds]
        algorithm = summaries[0].get("algorithm", "teli")
        rows.append(_row(method, algorithm, [_model(x, "student (") for x in summaries], summaries, algorithm, steps.get(method)))
    return rows


def _row(name: str, algorithm: str, models: list[dict], summaries: list[dict], wall_key: str, steps: int | None) -> dict:
    accs = [m["accuracy"] for m in models]
    # a student's training time, all rounds included (stages "teli", "teli-round2", ...)
    wall = [sum(v for k, v in s["wall_seconds"].items() if k == wall_key or k.startswith(f"{wall_key}-round")) or float("nan")
            for s in summaries]
    return {"method": name, "algorithm": algorithm, "arch": models[0]["arch"], "accuracy": accs, "mean": statistics.mean(accs),
            "std": statistics.pstdev(accs), "ece_mean": statistics.mean(m["ece"] for m in models),
            "wall_seconds": wall, "wall_seconds_mean": statistics.mean(wall), "wall_seconds_std": statistics.pstdev(wall),
            "steps": steps}


def budget_note(results: dict) -> str:
    if results["budget"] == "steps":
        return "Budget: equal steps (every student trains the same number of steps; the teachers' time is not counted)."
    c = results["calibration"]
    return (f"Budget: equal wall time: each method's steps were scaled so that its training time matches "
            f"{c['reference']}'s at the suite's steps ({c['how']}). Step times (ms): "
            + ", ".join(f"{m} {1000 * t:.0f}" for m, t in c["seconds_per_step"].items()) + ".")


def markdown_table(results: dict) -> str:
    if results.get("suite") == "speed":
        from teli.speed import speed_table

        return speed_table(results)
    seeds = results["seeds"]
    lines = [f"Suite `{results['suite']}`, seeds {', '.join(map(str, seeds))}. {budget_note(results)} "
             "Test accuracy of the final student (of its EMA for FixMatch); train time = the student's (or both "
             "teachers') training stage in seconds, mean ± std over seeds; timings are noisy (shared 2-vCPU machine).", ""]
    lines.append(f"| method | algorithm | model | test accuracy % (mean ± std) | {' | '.join(f'seed {s}' for s in seeds)} "
                 "| ECE | train time (s) | steps |")
    lines.append("|" + "---|" * (7 + len(seeds)))
    for r in results["rows"]:
        per_seed = " | ".join(f"{100 * a:.1f}" for a in r["accuracy"])
        steps = "" if r["steps"] is None else str(r["steps"])
        lines.append(f"| {r['method']} | {r['algorithm']} | {r['arch']} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f} | "
                     f"{per_seed} | {r['ece_mean']:.3f} | {r['wall_seconds_mean']:.1f} ± {r['wall_seconds_std']:.1f} | {steps} |")
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_time(results: dict, path: Path) -> None:
    """Test accuracy against the student's training time: one point per method, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results["rows"]:
        if r["algorithm"] == "teacher":
            continue
        ax.errorbar(r["wall_seconds_mean"], 100 * r["mean"], xerr=r["wall_seconds_std"], yerr=100 * r["std"],
                    fmt="o", capsize=3, label=r["method"])
    ax.set_xlabel("student training time (s)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{results['suite']}: {len(results['seeds'])} seeds, budget = equal {results['budget']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def config_for_suite(suite: str) -> RunConfig:
    return build_config(suite_tree(suite), SUITES[suite]["base"])


__all__ = ["METHODS", "SUITES", "markdown_table", "run_suite"]
