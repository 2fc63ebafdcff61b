"""`teli bench`: the results tables of the README, from runs anyone can repeat.

A suite is a list of methods run over seeds; each (method, seed) cell is a normal teli run folder
under OUT/SUITE/, so a finished cell (its summary.json exists) is not rerun: an interrupted bench
resumes where it stopped. Per seed the teachers are trained once and shared by the TELI variants,
which therefore differ only in how the student learns.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from teli.config import RunConfig, build_config
from teli.errors import TeliError
from teli.pipeline import distill, train_teachers

# method -> config overrides applied on top of the suite's base config
SUITES: dict[str, dict] = {
    "digits": {
        "base": {},
        "methods": {
            "TELI-beta": {"teli.lambda_mode": "beta"},
            "TELI-meta": {"teli.lambda_mode": "meta"},
        },
    },
}


def _summary(folder: Path) -> dict | None:
    path = folder / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _run_cell(folder: Path, make) -> dict:
    done = _summary(folder)
    if done is not None:
        return done
    make(overwrite=folder.exists())  # a folder without summary.json is an interrupted cell: redo it
    return _summary(folder)


def run_suite(suite: str, seeds: list[int], out: Path, base_overrides: dict | None = None) -> dict:
    if suite not in SUITES:
        raise TeliError(f"unknown bench suite '{suite}': choose one of {', '.join(sorted(SUITES))}")
    spec = SUITES[suite]
    root = Path(out) / suite
    cells: dict[str, dict[int, dict]] = {}
    for seed in seeds:
        base = {**spec["base"], **(base_overrides or {}), "seed": seed, "out_dir": str(root), "progress": False}
        teachers_dir = root / f"teachers-s{seed}"
        _run_cell(teachers_dir, lambda overwrite: train_teachers(build_config(overrides={**base, "name": teachers_dir.name}), overwrite))
        cells.setdefault("teachers", {})[seed] = _summary(teachers_dir)
        for i, (method, overrides) in enumerate(spec["methods"].items()):
            folder = root / f"{method}-s{seed}"
            # the first method also trains the supervised-only student (same init, steps and data)
            cfg = build_config(overrides={**base, **overrides, "name": folder.name, "baseline": i == 0})
            cells.setdefault(method, {})[seed] = _run_cell(folder, lambda overwrite, cfg=cfg: distill(cfg, teachers_dir, overwrite))
    results = {"suite": suite, "seeds": seeds, "rows": _rows(cells, seeds)}
    (root / "results.json").write_text(json.dumps(results, indent=2))
    (root / "results.md").write_text(markdown_table(results))
    return results


def _model(summary: dict, prefix: str) -> dict | None:
    return next((m for m in summary["models"] if m["name"].startswith(prefix)), None)


def _rows(cells: dict[str, dict[int, dict]], seeds: list[int]) -> list[dict]:
    rows = []
    teachers = cells["teachers"]
    n_teachers = len([m for m in teachers[seeds[0]]["models"] if m["name"].startswith("teacher")])
    for t in range(1, n_teachers + 1):
        rows.append(_row(f"teacher {t}", [_model(teachers[s], f"teacher {t}") for s in seeds], [teachers[s] for s in seeds], "teachers"))
    first = next(k for k in cells if k != "teachers")
    rows.append(_row("supervised only", [_model(cells[first][s], "student (supervised") for s in seeds],
                     [cells[first][s] for s in seeds], "supervised"))
    for method in (k for k in cells if k != "teachers"):
        summaries = [cells[method][s] for s in seeds]
        rows.append(_row(method, [_model(x, "student (TELI") or _model(x, "student (") for x in summaries], summaries,
                         summaries[0].get("algorithm", "teli")))
    return rows


def _row(name: str, models: list[dict], summaries: list[dict], wall_key: str) -> dict:
    accs = [m["accuracy"] for m in models]
    arch = models[0]["arch"]
    wall = [s["wall_seconds"].get(wall_key, float("nan")) for s in summaries]
    return {"method": name, "arch": arch, "accuracy": accs, "mean": statistics.mean(accs),
            "std": statistics.pstdev(accs), "ece_mean": statistics.mean(m["ece"] for m in models),
            "wall_seconds_mean": statistics.mean(wall)}


def markdown_table(results: dict) -> str:
    seeds = results["seeds"]
    head = f"| method | model | test accuracy (mean ± std) | {' | '.join(f'seed {s}' for s in seeds)} | ECE | train time (s) |"
    lines = [head, "|" + "---|" * (5 + len(seeds))]
    for r in results["rows"]:
        per_seed = " | ".join(f"{100 * a:.1f}" for a in r["accuracy"])
        lines.append(f"| {r['method']} | {r['arch']} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f} | {per_seed} | "
                     f"{r['ece_mean']:.3f} | {r['wall_seconds_mean']:.1f} |")
    return "\n".join(lines) + "\n"


def config_for_suite(suite: str) -> RunConfig:
    return build_config(overrides=SUITES[suite]["base"])
