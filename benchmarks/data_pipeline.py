"""The data pipeline's share of a TELI student step (goal: under 10 %).

In one run, on the same batches: the data part (index the uint8 pool, weak augmentation of the
labelled and unlabelled batch, strong augmentation of the unlabelled batch, normalisation) and the
whole student step (that data part + TELI's forward, loss, backward and SGD update). The ratio is
data / whole. Data: Fashion-MNIST from --data-root if it is there, else random 28x28 images of the
same shape; teacher logits are random (the step only indexes them). The timing is teli.speed's
(shared with `teli bench --suite speed`, which reports the same share on the digits default).

Output on the 2-vCPU reference machine (torch 2.14.1, cpu, nothing else running), real Fashion-MNIST:

    $ python benchmarks/data_pipeline.py --data-root data --steps 20 \
          --batch 32 --unlabelled-batch 128 --width 32 --depth 2      # the default config's shapes
    dataset fashion-mnist, batch 32 labelled + 128 unlabelled (weak + strong), student cnn(w32,d2), 1 thread(s), 20 steps, medians:
      data pipeline (assembly + weak + strong aug):     6.9 ms/step
      whole TELI student step:                        307.1 ms/step
      data share: 2.2 %  (goal < 10 %: met)

    $ python benchmarks/data_pipeline.py --data-root data --steps 5   # fashion-mnist presets' shapes
    dataset fashion-mnist, batch 64 labelled + 256 unlabelled (weak + strong), student cnn(w64,d3), 1 thread(s), 5 steps, medians:
      data pipeline (assembly + weak + strong aug):    11.8 ms/step
      whole TELI student step:                       2257.1 ms/step
      data share: 0.5 %  (goal < 10 %: met)
"""

from __future__ import annotations

import argparse

import torch

from teli.config import build_config
from teli.data import load_dataset, make_ssl_data, split_pool
from teli.data.datasets import ImageDataset
from teli.engine import default_threads
from teli.errors import TeliError
from teli.speed import interleaved, make_stepper


def dataset(data_root: str) -> ImageDataset:
    try:
        return load_dataset("fashion-mnist", data_root)
    except TeliError:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (60000, 1, 28, 28), dtype=torch.uint8, generator=g)
        y = torch.arange(60000) % 10
        return ImageDataset("random-28x28", x, y, x[:1000], y[:1000], 10, (0.5,), (0.25,), True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="data")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--unlabelled-batch", type=int, default=256)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    ds = dataset(args.data_root)
    data = make_ssl_data(ds, split_pool(ds.y_train, ds.num_classes, 10, 0, seed=0))
    logits = torch.randn(2, len(data.x_u), data.num_classes, generator=torch.Generator().manual_seed(1)) * 3
    cfg = build_config(overrides={"student.model": {"arch": "cnn", "width": args.width, "depth": args.depth},
                                  "student.optim.batch_size": args.batch, "student.unlabelled_batch_size": args.unlabelled_batch,
                                  "data.strong_augment": True, "student.optim.lr": 0.03})
    t = interleaved({"teli": make_stepper(cfg, data, logits)}, steps=1, repeats=args.steps, warmup=3)["teli"]
    d, s = t["data"], t["step"]
    print(f"dataset {ds.name}, batch {args.batch} labelled + {args.unlabelled_batch} unlabelled (weak + strong), "
          f"student cnn(w{args.width},d{args.depth}), {threads} thread(s), {args.steps} steps, medians:")
    print(f"  data pipeline (assembly + weak + strong aug): {1000 * d:7.1f} ms/step")
    print(f"  whole TELI student step:                      {1000 * s:7.1f} ms/step")
    print(f"  data share: {100 * d / s:.1f} %  (goal < 10 %: {'met' if d / s < 0.10 else 'NOT met'})")


if __name__ == "__main__":
    main()
