"""The shared training loop: loss goes down, schedule, EMA, determinism, the non-finite guard."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from teli.algorithms import Supervised
from teli.config import OptimConfig
from teli.engine import MetricsLog, StepOutput, setup_fabric, train, warmup_cosine
from teli.errors import TeliError


def separable_batches(seed: int = 0, batch: int = 16):
    """Endless batches of two well-separated Gaussian blobs shaped like 1x2x2 images."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        y = torch.randint(0, 2, (batch,), generator=gen)
        x = torch.randn(batch, 1, 2, 2, generator=gen) + (4 * y - 2).view(-1, 1, 1, 1).float()
        yield {"x_l": x, "y_l": y}


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def optim(**kw) -> OptimConfig:
    base = {"steps": 40, "batch_size": 16, "lr": 0.1, "log_every": 5}
    return OptimConfig(**{**base, **kw})


@pytest.fixture
def fabric():
    return setup_fabric("cpu", threads=1, seed=0)


def test_loss_falls_and_is_logged(tmp_path, fabric):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    result = train(Supervised(tiny_model()), separable_batches(), optim(), fabric=fabric, stage="toy", log=log, progress=False)
    log.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert all(r["stage"] == "toy" and "loss_labelled" in r for r in records)
    assert records[-1]["loss"] < 0.5 * records[0]["loss"]
    assert result.steps == 40 and result.last_logs["loss"] == records[-1]["loss"]
    # the trained model separates the blobs
    batch = next(separable_batches(seed=99, batch=200))
    with torch.no_grad():
        acc = (result.model(batch["x_l"]).argmax(1) == batch["y_l"]).float().mean()
    assert acc > 0.95


def scheduled_lrs(lr: float, warmup_steps: int, total_steps: int, count: int) -> list[float]:
    """The learning rate warmup_cosine gives for the first `count` steps."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = warmup_cosine(opt, warmup_steps=warmup_steps, total_steps=total_steps)
    seen = []
    for _ in range(count):
        seen.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return seen


def test_warmup_cosine_values():
    seen = scheduled_lrs(1.0, warmup_steps=2, total_steps=6, count=7)
    c = math.cos
    expected = [0.5, 1.0, 1.0, 0.5 * (1 + c(math.pi / 4)), 0.5, 0.5 * (1 + c(3 * math.pi / 4)), 0.0]
    assert seen == pytest.approx(expected, abs=1e-12)


def test_warmup_cosine_without_warmup_starts_at_full_lr():
    seen = scheduled_lrs(0.2, warmup_steps=0, total_steps=4, count=5)
    assert seen == pytest.approx([0.2, 0.2 * 0.5 * (1 + math.cos(math.pi / 4)), 0.1, 0.2 * 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0])


class Recorder(Supervised):
    """Supervised, recording the learning rate the engine hands each step."""

    def __init__(self, model):
        super().__init__(model)
        self.lrs = []

    def train_step(self, batch, ctx):
        self.lrs.append((ctx.step, ctx.lr))
        return super().train_step(batch, ctx)


def test_step_context_carries_the_scheduled_lr(fabric):
    algo = Recorder(tiny_model())
    train(algo, separable_batches(), optim(steps=4, warmup_steps=2, lr=0.4), fabric=fabric, stage="toy", progress=False)
    assert [s for s, _ in algo.lrs] == [1, 2, 3, 4]
    assert [lr for _, lr in algo.lrs] == pytest.approx([0.2, 0.4, 0.4, 0.2])


def test_ema_model_differs_from_the_raw_model(fabric):
    algo = Supervised(tiny_model())
    result = train(algo, separable_batches(), optim(steps=20, ema_decay=0.9), fabric=fabric, stage="toy", progress=False)
    raw = algo.model
    assert result.model is not raw
    ema_params = dict(result.model.named_parameters())
    raw_params = dict(raw.named_parameters())
    assert ema_params.keys() == raw_params.keys()
    assert any(not torch.allclose(ema_params[k], raw_params[k]) for k in raw_params)
    # without EMA the returned model is the trained one
    algo2 = Supervised(tiny_model())
    assert train(algo2, separable_batches(), optim(steps=5), fabric=fabric, stage="toy", progress=False).model is algo2.model


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_same_weights():
    def once(seed):
        f = setup_fabric("cpu", threads=1, seed=seed)
        return _weights(train(Supervised(tiny_model(seed)), separable_batches(seed), optim(steps=15), fabric=f,
                              stage="toy", progress=False).model)

    a, b, c = once(0), once(0), once(1)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_grad_clip_and_adamw_run(fabric):
    result = train(Supervised(tiny_model()), separable_batches(), optim(steps=10, grad_clip=0.5, optimizer="adamw", lr=0.01),
                   fabric=fabric, stage="toy", progress=False)
    assert math.isfinite(result.last_logs["loss"])


class NaNAt:
    """A fake algorithm whose loss becomes NaN at a given step."""

    name = "nan"

    def __init__(self, step: int):
        self.model = tiny_model()
        self.bad_step = step

    def train_step(self, batch, ctx):
        loss = self.model(batch["x_l"]).pow(2).mean()
        if ctx.step == self.bad_step:
            loss = loss * float("nan")
            return StepOutput(loss, {"loss_weird": loss.detach(), "loss_fine": torch.tensor(1.0)})
        return StepOutput(loss, {})


def test_non_finite_loss_raises_teli_error_naming_the_step(fabric):
    with pytest.raises(TeliError, match=r"at step 3 \(term: loss_weird\)") as info:
        train(NaNAt(3), separable_batches(), optim(steps=10), fabric=fabric, stage="student", progress=False)
    assert "student" in str(info.value) and "nan" in str(info.value)
    assert "\n" not in str(info.value)


def test_eval_called_every_eval_every_and_at_the_end(tmp_path, fabric):
    calls = []

    def evaluate(model):
        calls.append(model.training)
        return {"val_accuracy": 1.0}

    path = tmp_path / "m.jsonl"
    log = MetricsLog(path)
    train(Supervised(tiny_model()), separable_batches(), optim(steps=7, eval_every=3), fabric=fabric, stage="toy", log=log,
          evaluate=evaluate, progress=False)
    log.close()
    evals = [json.loads(line) for line in path.read_text().splitlines() if "eval" in line]
    assert [e["step"] for e in evals] == [3, 6, 7]
    assert evals[0]["eval"] == {"val_accuracy": 1.0}
    assert len(calls) == 3


def test_ema_decay_warms_up_so_a_short_run_is_not_dragged_by_the_first_weights():
    from torch.optim.swa_utils import AveragedModel

    from teli.engine import warmup_ema

    model = torch.nn.BatchNorm1d(1)  # a float parameter and an integer buffer
    ema = AveragedModel(model, multi_avg_fn=warmup_ema(0.97), use_buffers=True)
    expected = None
    for t in range(60):
        with torch.no_grad():
            model.weight.fill_(float(t))
        model.num_batches_tracked.fill_(t)
        ema.update_parameters(model)
        d = min(0.97, (1 + t) / (10 + t)) if t else None  # update t (the first one copies) has t models averaged before
        expected = float(t) if t == 0 else d * expected + (1 - d) * t
        assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6)
    assert ema.module.num_batches_tracked.item() == 59  # integer buffers follow the model
    # after 60 steps of a weight rising 0..59 the average sits near the recent weights; a fixed 0.97 would be at ~34
    assert ema.module.weight.item() > 50
