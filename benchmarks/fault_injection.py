"""Fault injection: kill `teli run` with SIGKILL at random (seeded) moments, resume it with --resume until
it finishes, and check that the final test accuracies (and the saved weights) equal an uninterrupted run's.

Each trial aims its kills at one place, in turn: a teacher stage, the student stage, the middle of a
checkpoint write (TELI_FAULT_SLEEP_IN_WRITE makes every atomic write pause between writing its
temporary file and renaming it; the kill lands in that pause), or anywhere. A trial is killed 1-3
times, then allowed to finish. Where each kill actually landed is read back from the run folder.

    PYTHONPATH=src python benchmarks/fault_injection.py --workdir /tmp/fi20    # 20 trials, 2 at a time

Output on the 2-vCPU reference machine (digits, teachers 40 steps, student 60, checkpoint every 10;
~11 minutes, almost all of it Python/torch start-up of the 2-4 launches per trial):

    reference run: 15.2s, accuracies [0.8889, 0.8537, 0.913, 0.9259]
    trial  0 aim=teacher  kills=['teacher2', 'teacher2'] -> identical
    trial  1 aim=student  kills=['teli'] -> identical
    trial  2 aim=write    kills=['teacher1 (in checkpoint write)'] -> identical
    ...
    trial 18 aim=write    kills=['teacher1 (in checkpoint write)'] -> identical
    trial 19 aim=anywhere kills=['startup', 'startup', 'startup'] -> identical
    37 kills: 18 in a teacher stage, 11 in the student stage, 9 during a checkpoint write; 649s in all
    survived 20/20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
STAGES = ["teacher1", "teacher2", "supervised", "teli"]
TOTALS = {"teacher1": 40, "teacher2": 40, "supervised": 60, "teli": 60}
SETTINGS = ["--steps", "60", "--threads", "1", "--quiet", "--json",
            "--set", "teachers.optim.steps=40", "--set", "student.unlabelled_batch_size=64", "--set", "deterministic=true",
            "--set", "checkpoint.every=10", "--set", "teli.threshold=0.0", "--set", "teli.lambda_per=sample"]
TARGETS = ["teacher", "student", "write", "anywhere"]


def launch(out: Path, name: str, env_extra: dict | None = None) -> subprocess.Popen:
    run_dir = out / name
    if (run_dir / "config.yaml").is_file():
        args = ["run", "--resume", str(run_dir), "--quiet", "--json"]
    else:  # killed before the run folder existed (it appears whole, or not at all): start afresh
        args = ["run", "--out", str(out), "--name", name, *SETTINGS]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "teli.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)


def progress_of(run_dir: Path) -> dict[str, int]:
    steps = {}
    for stage in STAGES:
        pointer = run_dir / "checkpoints" / stage / "latest.json"
        steps[stage] = json.loads(pointer.read_text())["step"] if pointer.is_file() else 0
    return steps


def where(run_dir: Path) -> str:
    """Where a kill landed, read from what it left behind."""
    if not (run_dir / "config.yaml").is_file():
        return "startup"
    half_written = list((run_dir / "checkpoints").glob("*/.ckpt-*.tmp")) + list((run_dir / "checkpoints").glob("*/.latest.json.*"))
    steps = progress_of(run_dir)
    stage = next((s for s in STAGES if steps[s] < TOTALS[s]), "after-training")
    return f"{stage}{' (in checkpoint write)' if half_written else ''}"


def wait_then_kill(proc: subprocess.Popen, run_dir: Path, target: str, rng: random.Random, horizon: float) -> None:
    """Kill `proc` at a moment chosen by `target`; return early if it finishes first."""
    if target == "write":  # kill inside the n-th pause between a checkpoint file's write and its rename
        nth, seen = rng.randint(1, 12), 0
        for line in proc.stderr:
            if line.startswith("teli-fault: pausing") and "checkpoints" in line:
                seen += 1
                if seen == nth:
                    time.sleep(rng.uniform(0.05, 0.4))  # the pause lasts 0.5 s
                    break
        else:
            return
    elif target in ("teacher", "student"):
        stage = rng.choice(["teacher1", "teacher2"]) if target == "teacher" else "teli"
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline and not (run_dir / "checkpoints" / stage / "latest.json").is_file():
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4 if target == "teacher" else 0.8))
    else:
        time.sleep(rng.uniform(0.5, horizon))
    if proc.poll() is None:
        proc.kill()  # SIGKILL: no handler runs, nothing is flushed
    proc.wait()


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"teli exited {proc.returncode}: {err.strip().splitlines()[-1] if err.strip() else ''}")
    return json.loads(out)


def fingerprint(summary: dict, run_dir: Path) -> dict:
    files = ["student.safetensors", "supervised.safetensors", "teachers/teacher_1.safetensors", "teachers/teacher_2.safetensors"]
    return {"accuracies": [(m["name"], m["accuracy"]) for m in summary["models"]],
            "weights": {f: hashlib.sha256((run_dir / f).read_bytes()).hexdigest() for f in files}}


def trial(i: int, out: Path, seed: int, reference: dict, horizon: float) -> dict:
    rng = random.Random(seed * 1000 + i)
    target, name = TARGETS[i % len(TARGETS)], f"trial{i:02d}"
    env = {"TELI_FAULT_SLEEP_IN_WRITE": "0.5"} if target == "write" else {}
    landed = []
    for _ in range(rng.randint(1, 3)):
        proc = launch(out, name, env)
        if target != "write":
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # drain stderr
        wait_then_kill(proc, out / name, target, rng, horizon)
        if proc.returncode == 0:
            break
        landed.append(where(out / name))
    launches = len(landed) + 1
    result = finish(launch(out, name))  # no more kills: let it finish
    got = fingerprint(result, out / name)
    return {"trial": i, "target": target, "kills": landed, "launches": launches,
            "accuracies_equal": got["accuracies"] == reference["accuracies"], "weights_equal": got["weights"] == reference["weights"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--workdir", help="where the runs go (default: a temporary folder, removed afterwards)")
    args = parser.parse_args(argv)
    out = Path(args.workdir or tempfile.mkdtemp(prefix="teli-faults-"))
    start = time.time()
    reference = fingerprint(finish(launch(out, "reference")), out / "reference")
    horizon = time.time() - start
    print(f"reference run: {horizon:.1f}s, accuracies {[round(a, 4) for _, a in reference['accuracies']]}", flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda i: trial(i, out, args.seed, reference, horizon), range(args.trials)))
    for r in results:
        print(f"trial {r['trial']:2d} aim={r['target']:8s} kills={r['kills']} -> "
              f"{'identical' if r['accuracies_equal'] and r['weights_equal'] else 'DIFFERENT'}", flush=True)
    kills = [k for r in results for k in r["kills"]]
    survived = sum(r["accuracies_equal"] and r["weights_equal"] for r in results)
    in_write = sum("checkpoint write" in k for k in kills)
    in_teacher = sum(k.startswith("teacher") for k in kills)
    in_student = sum(k.startswith("teli") for k in kills)
    print(f"{len(kills)} kills: {in_teacher} in a teacher stage, {in_student} in the student stage, "
          f"{in_write} during a checkpoint write; {time.time() - start:.0f}s in all")
    print(f"survived {survived}/{len(results)}")
    if not args.workdir:
        shutil.rmtree(out, ignore_errors=True)
    return 0 if survived == len(results) and in_write > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
