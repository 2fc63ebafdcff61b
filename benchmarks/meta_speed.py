"""Step time of TELI-meta (fast and exact hypergradients) against TELI-beta, on the default student.

    python benchmarks/meta_speed.py [--steps 60] [--repeats 5]

The three step kinds run interleaved in one process (round-robin blocks of steps, median of the
blocks), so machine noise hits them alike; only ratios are reported. Teachers are the default pair,
trained briefly; the student is the default `teli run` student on digits.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from teli.algorithms import build_algorithm
from teli.config import load_config
from teli.data import SSLBatches
from teli.engine import StepContext, setup_fabric
from teli.models import build_model
from teli.pipeline import prepare_data
from teli.teachers import teacher_logits, train_teacher


def make_stepper(cfg, data, logits, mode: str, method: str, every: int = 1):
    cfg = cfg.model_copy(deep=True)
    cfg.teli.lambda_mode, cfg.teli.meta_method, cfg.teli.meta_every = mode, method, every
    torch.manual_seed(0)
    model = build_model(cfg.student.model, data.input_shape, data.num_classes)
    batches = SSLBatches(data, cfg.student.optim.batch_size, cfg.student.unlabelled_batch_size, seed=0)
    algorithm = build_algorithm("teli", model, logits, cfg, batches.rng, data)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.student.optim.lr, momentum=0.9)

    count = iter(range(1, 10**9))

    def step():
        optimizer.zero_grad(set_to_none=True)
        ctx = StepContext(next(count), cfg.student.optim.lr, lambda loss: loss.backward())
        out = algorithm.train_step(next(batches), ctx)
        if not out.backward_done:
            out.loss.backward()
        optimizer.step()

    return step


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
    kinds = {"beta": make_stepper(cfg, data, logits, "beta", "fast"),
             "meta-fast": make_stepper(cfg, data, logits, "meta", "fast"),
             "meta-exact": make_stepper(cfg, data, logits, "meta", "exact"),
             "meta-fast-every2": make_stepper(cfg, data, logits, "meta", "fast", every=2),
             "meta-fast-every4": make_stepper(cfg, data, logits, "meta", "fast", every=4)}
    for step in kinds.values():  # warm-up
        for _ in range(5):
            step()
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for name, step in kinds.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - start) / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"threads={torch.get_num_threads()}  student={cfg.student.model.arch}  params="
          f"{sum(p.numel() for p in build_model(cfg.student.model, data.input_shape, data.num_classes).parameters())}")
    for name, value in med.items():
        print(f"{name:>16}: {1000 * value:6.1f} ms/step  ({value / med['beta']:.2f} x beta)")
    print(f"meta(fast) / beta  = {med['meta-fast'] / med['beta']:.2f}   (goal <= 1.35; head updated every step)")
    print(f"exact / meta(fast) = {med['meta-exact'] / med['meta-fast']:.2f}")


if __name__ == "__main__":
    main()
