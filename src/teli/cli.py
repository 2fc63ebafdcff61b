"""`teli` command line: a thin layer over teli.pipeline.

    teli run                       whole pipeline on the embedded default (digits, 5 labels/class)
    teli run --dataset cifar10 --download    a torchvision dataset (fetched into --data-root)
    teli run --data folder:PATH    your own images (PATH/train/<class>/*.png), or --data npz:FILE
    teli run --resume RUN          continue an interrupted run (killed, or stopped by SIGTERM/SIGINT)
    teli teachers                  train the teachers only
    teli distill --teachers RUN    distil the teachers of an earlier run into a student
    teli evaluate RUN              re-score a finished run on the test set
    teli bench --suite digits      every method over seeds: results.md, results.json, accuracy_vs_time.png

Settings come from --config FILE.yaml, then --set KEY=VALUE and the shortcut flags (which win).
Bad input ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from teli.errors import TeliError

# Shortcut flags -> dotted config keys.
SHORTCUTS = {
    "algorithm": "algorithm",
    "dataset": "data.dataset",
    "data_root": "data.data_root",
    "data": "data.data",
    "resize": "data.resize",
    "labels_per_class": "data.labels_per_class",
    "seed": "seed",
    "lambda_mode": "teli.lambda_mode",
    "threshold": "teli.threshold",
    "gamma": "teli.gamma",
    "steps": "student.optim.steps",
    "out": "out_dir",
    "name": "name",
    "threads": "threads",
    "accelerator": "accelerator",
    "precision": "precision",
}


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse would print the usage block too)
        raise TeliError(f"{message} (see `{self.prog} --help`)")


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set teli.gamma=0.2 (repeatable; wins over --config)")
    p.add_argument("--algorithm", help="student algorithm (default: teli)")
    p.add_argument("--dataset", help="dataset name (default: digits, embedded)")
    p.add_argument("--data", help="your own data instead of --dataset: folder:PATH (PATH/train/<class>/*.png) or npz:PATH")
    p.add_argument("--data-root", help="where datasets are stored (default: data)")
    p.add_argument("--download", action="store_true", help="fetch a missing dataset into --data-root (needs the network)")
    p.add_argument("--resize", type=int, help="resize every image to NxN")
    p.add_argument("-k", "--labels-per-class", type=int, help="labelled images per class")
    p.add_argument("--seed", type=int)
    p.add_argument("--lambda", dest="lambda_mode", help="lambda mode: fixed | beta | meta")
    p.add_argument("--threshold", type=float, help="teachers' confidence threshold in [0, 1]")
    p.add_argument("--gamma", type=float, help="weight of the mixup loss on disagreements")
    p.add_argument("--steps", type=int, help="student training steps")
    p.add_argument("--out", help="parent folder of run folders (default: runs)")
    p.add_argument("--name", help="run folder name (default: dataset-k-mode-seed-time)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--accelerator", help="cpu | cuda | mps | auto (Lightning Fabric)")
    p.add_argument("--precision", help="32-true | bf16-mixed | 16-mixed (Lightning Fabric)")
    p.add_argument("--no-baseline", action="store_true", help="skip the supervised-only student")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder of the same name")
    p.add_argument("--resume", metavar="RUN", help="continue this interrupted run folder with its own config: finished "
                                                 "stages are loaded, the interrupted one continues from its checkpoint")
    p.add_argument("--allow-change", dest="allow_change", action="append", default=[], metavar="KEY",
                   help="with --resume: let a harmless setting differ from the run's config (e.g. '*.log_every', progress)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print summary.json instead of the table")


def build_parser() -> Parser:
    parser = Parser(prog="teli", description="Semi-supervised classification by teacher-ensemble distillation "
                                             "with learned label interpolation.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_run_options(sub.add_parser("run", help="teachers -> pseudo-labels -> TELI student (+ supervised baseline)"))
    add_run_options(sub.add_parser("teachers", help="train the teachers only"))
    distill = sub.add_parser("distill", help="distil the teachers of an earlier run into a student")
    distill.add_argument("--teachers", required=True, help="run folder holding teachers/ (from `teli teachers` or `teli run`)")
    add_run_options(distill)
    bench = sub.add_parser("bench", help="run a benchmark suite over seeds; write results.json and a markdown table")
    bench.add_argument("--suite", default="digits", help="digits | fashion-mnist-10 | fashion-mnist-100 | cifar10-40 | "
                                                        "cifar10-250 | speed (default: digits)")
    bench.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    bench.add_argument("--out", default="bench-results", help="results folder (finished cells are reused)")
    bench.add_argument("--budget", choices=["steps", "time"], default="steps",
                       help="steps: equal student steps; time: each method's steps scaled to TELI-beta's wall time")
    bench.add_argument("--methods", nargs="+", help="only these methods of the suite (default: all)")
    bench.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key of every cell, e.g. --set student.optim.steps=50 (repeatable)")
    bench.add_argument("--json", action="store_true", help="print results.json instead of the table")
    evaluate = sub.add_parser("evaluate", help="re-score a finished run's models on the test set")
    evaluate.add_argument("run_dir", help="run folder")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return parser


def config_from_args(args: argparse.Namespace):
    from teli.config import load_config, parse_override

    overrides = dict(parse_override(text) for text in args.overrides)
    for flag, key in SHORTCUTS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    if args.download:
        overrides["data.download"] = True
    if args.no_baseline:
        overrides["baseline"] = False
    if args.quiet:
        overrides["progress"] = False
    if args.resume:  # the run's own config, under --config and the flags (which must then agree with it)
        return resumed_config(Path(args.resume), args.config, overrides)
    return load_config(args.config, overrides)


def resumed_config(run_dir: Path, config_file: str | None, overrides: dict):
    from teli.config import build_config, read_yaml

    saved = run_dir / "config.yaml"
    tree = read_yaml(saved) if saved.is_file() else {}
    if config_file:
        tree = merge(tree, read_yaml(config_file))
    overrides = {**overrides, "out_dir": str(run_dir.parent), "name": run_dir.name}
    return build_config(tree, overrides, f"{saved} / command line")


def merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def dispatch(args: argparse.Namespace) -> dict:
    from teli import pipeline

    if args.command == "evaluate":
        return pipeline.evaluate(Path(args.run_dir))
    if args.command == "bench":
        from teli.bench import run_suite

        from teli.config import parse_override

        overrides = dict(parse_override(text) for text in args.overrides)
        return run_suite(args.suite, args.seeds, Path(args.out), overrides, args.budget, args.methods)
    if args.resume and args.overwrite:
        raise TeliError("--resume and --overwrite exclude each other: continue the run, or replace it")
    if args.allow_change and not args.resume:
        raise TeliError("--allow-change only applies with --resume RUN")
    cfg = config_from_args(args)
    opts = {"overwrite": args.overwrite, "resume": Path(args.resume) if args.resume else None, "allow_change": args.allow_change}
    if args.command == "run":
        return pipeline.run(cfg, **opts)
    if args.command == "teachers":
        return pipeline.train_teachers(cfg, **opts)
    return pipeline.distill(cfg, Path(args.teachers), **opts)


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt  # outside training (which checkpoints first) SIGTERM ends like Ctrl-C: status 130


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        args = build_parser().parse_args(argv)
        summary = dispatch(args)
    except TeliError as err:
        print(f"teli: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # teli.resume.Interrupted says where the checkpoint is
        print(f"teli: interrupted{': ' + str(err) if str(err) else ''}", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(summary, indent=2))
    elif args.command == "bench":
        from teli.bench import markdown_table

        print(markdown_table(summary))
    else:
        from teli.report import print_summary

        print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
