"""Step time of TELI-meta (fast and exact hypergradients) against TELI-beta, on the default student.

    python benchmarks/meta_speed.py [--steps 60] [--repeats 5]

The step kinds run interleaved in one process (teli.speed: round-robin blocks of steps, median of the
blocks), so machine noise hits them alike; only ratios are reported. `teli bench --suite speed` reports
the meta/beta ratio together with the other speed goals. Teachers are the default pair,
trained briefly; the student is the default `teli run` student on digits.
"""

from __future__ import annotations

import argparse

import torch

from teli.config import build_config, load_config
from teli.engine import setup_fabric
from teli.models import build_model
from teli.pipeline import prepare_data
from teli.speed import interleaved, make_stepper
from teli.teachers import teacher_logits, train_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per kind")
    args = parser.parse_args()

    cfg = load_config()
    setup_fabric(threads=cfg.threads)
    data = prepare_data(cfg)
    teachers = [train_teacher(spec, data, cfg.teachers.optim, fabric=setup_fabric(threads=cfg.threads), seed=i, stage=f"t{i}",
                              progress=False) for i, spec in enumerate(cfg.teachers.models)]
    logits = teacher_logits(teachers, data)

    def kind(mode: str, method: str = "fast", every: int = 1):
        over = {"teli.lambda_mode": mode, "teli.meta_method": method, "teli.meta_every": every}
        return make_stepper(build_config(cfg.model_dump(), over), data, logits)

    kinds = {"beta": kind("beta"), "meta-fast": kind("meta"), "meta-exact": kind("meta", "exact"),
             "meta-fast-every2": kind("meta", every=2), "meta-fast-every4": kind("meta", every=4)}
    med = {k: v["step"] for k, v in interleaved(kinds, args.steps, args.repeats, warmup=5).items()}
    print(f"threads={torch.get_num_threads()}  student={cfg.student.model.arch}  params="
          f"{sum(p.numel() for p in build_model(cfg.student.model, data.input_shape, data.num_classes).parameters())}")
    for name, value in med.items():
        print(f"{name:>16}: {1000 * value:6.1f} ms/step  ({value / med['beta']:.2f} x beta)")
    print(f"meta(fast) / beta  = {med['meta-fast'] / med['beta']:.2f}   (goal <= 1.35; head updated every step)")
    print(f"exact / meta(fast) = {med['meta-exact'] / med['meta-fast']:.2f}")


if __name__ == "__main__":
    main()
