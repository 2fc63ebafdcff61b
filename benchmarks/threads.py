"""Training-step time with torch.set_num_threads(1) vs (2), measured in one process, interleaved.

The engine uses one torch thread on machines with at most two cores (teli.engine.default_threads);
this measures whether that is right. It times, on digits, the default student (cnn w32 d2):
  * a TELI step: labelled batch 32 + unlabelled batch 128 in one forward, all loss terms, backward, SGD;
  * a supervised step: labelled batch 32, cross-entropy, backward, SGD.
Thread counts alternate block by block (each block STEPS steps after WARMUP), REPEATS blocks each;
the report is the median time per step and the ratio t(1 thread) / t(2 threads): above 1 means two
threads are faster. The best-block ratio (fastest block of each) approximates an idle machine; the
median shows what happens when other processes share the cores.

    PYTHONPATH=src python benchmarks/threads.py

Output on the reference machine (2 vCPUs, torch 2.14.1, CPU only), shared with other jobs
(load average 2 on 2 cores):

    torch 2.14.1+cu130, 2 usable cores, student cnn(w32,d2), labelled batch 32, unlabelled batch 128, 7 x 20 steps per setting, load average before 2.0
          teli step: 1 thread   23.89 ms, 2 threads   56.98 ms, ratio t1/t2 = 0.42  (spread 1t 23.5-25.4, 2t 18.3-258.1 ms; best-block ratio 1.29)
    supervised step: 1 thread    5.83 ms, 2 threads    6.11 ms, ratio t1/t2 = 0.95  (spread 1t 5.7-8.7, 2t 3.9-440.5 ms; best-block ratio 1.46)
    load average after 2.3 (other processes on the same cores distort the 2-thread case most)

Reading: the fastest blocks show two threads ~1.3-1.5x faster when the cores are free, but as soon
as anything else runs on them the 2-thread step degrades badly (up to 10-40x slower blocks; the
median TELI step was 2.4x slower here, and 11x / 28x slower in two earlier runs at load averages 3.7
and 6.2), while one thread stays within ~10 %. One thread is the robust default on <= 2 cores; on
a dedicated idle 2-core machine `--threads 2` is faster.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from teli.algorithms import Supervised, TeliStudent
from teli.config import RunConfig
from teli.data import SSLBatches, load_dataset, make_ssl_data, split_pool
from teli.engine import StepContext, make_optimizer
from teli.models import build_model


def make_step(kind: str, data, cfg: RunConfig):
    torch.manual_seed(0)
    model = build_model(cfg.student.model, data.input_shape, data.num_classes)
    if kind == "teli":
        # Teacher outputs only decide masks and targets; their values do not change a step's cost much.
        # Random logits with a confident majority (like trained teachers) exercise both loss terms.
        gen = torch.Generator().manual_seed(0)
        logits = torch.randn(2, len(data.x_u), data.num_classes, generator=gen) * 4
        batches = SSLBatches(data, cfg.student.optim.batch_size, cfg.student.unlabelled_batch_size, seed=0)
        algo = TeliStudent(model, logits, cfg.teli, batches.rng)
    else:
        batches = SSLBatches(data, cfg.student.optim.batch_size, seed=0)
        algo = Supervised(model)
    optimizer = make_optimizer(model.parameters(), cfg.student.optim)
    model.train()

    def step():
        out = algo.train_step(next(batches), StepContext(step=1, lr=cfg.student.optim.lr))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    return step


def time_block(step, threads: int, warmup: int, steps: int) -> float:
    torch.set_num_threads(threads)
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    cfg = RunConfig()
    ds = load_dataset("digits")
    data = make_ssl_data(ds, split_pool(ds.y_train, ds.num_classes, cfg.data.labels_per_class, 0, seed=0))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"torch {torch.__version__}, {cores} usable cores, student {cfg.student.model.arch}"
          f"(w{cfg.student.model.width},d{cfg.student.model.depth}), labelled batch {cfg.student.optim.batch_size}, "
          f"unlabelled batch {cfg.student.unlabelled_batch_size}, {args.repeats} x {args.steps} steps per setting, "
          f"load average before {os.getloadavg()[0]:.1f}")
    for kind in ["teli", "supervised"]:
        step = make_step(kind, data, cfg)
        times: dict[int, list[float]] = {1: [], 2: []}
        for r in range(args.repeats):
            for threads in ((1, 2) if r % 2 == 0 else (2, 1)):  # alternate which goes first
                times[threads].append(time_block(step, threads, args.warmup, args.steps))
        med = {t: statistics.median(v) for t, v in times.items()}
        print(f"{kind:>10} step: 1 thread {1000 * med[1]:7.2f} ms, 2 threads {1000 * med[2]:7.2f} ms, "
              f"ratio t1/t2 = {med[1] / med[2]:.2f}  (spread 1t {1000 * min(times[1]):.1f}-{1000 * max(times[1]):.1f}, "
              f"2t {1000 * min(times[2]):.1f}-{1000 * max(times[2]):.1f} ms; best-block ratio {min(times[1]) / min(times[2]):.2f})")
    print(f"load average after {os.getloadavg()[0]:.1f} (other processes on the same cores distort the 2-thread case most)")


if __name__ == "__main__":
    main()
