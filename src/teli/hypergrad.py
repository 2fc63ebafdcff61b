"""The meta-gradient of TELI's lambda head, by hand: no library computes a bilevel hypergradient.

Objective (METHOD.md):  phi* = argmin L_meta(theta'(phi)),  theta' = theta - eta * grad_theta L_total(theta, phi),
with L_total = ... + gamma * L_mixup and L_mixup = mean over the disagreeing images D of
sum_n w_n(x_i; phi) * CE(S(x_i), y_n,i).  L_mixup is linear in every weight w_i,n, so

    dL_meta / dw_i,n = -eta * gamma / |D| * < grad_theta CE(S(x_i), y_n,i) , v >,   v = grad L_meta(theta')

i.e. a directional derivative of a per-image loss along v. `fast_weight_grad` takes it as a finite
difference: one extra forward pass at theta + h*v, against the real step's own forward at theta, and
needs no second-order graph; `exact_head_grad` is the second-order reference (torch.func +
create_graph) that the fast form is tested against.

BatchNorm: a perturbation of theta moves the batch statistics, which moves every image's output,
so the extra forward runs on the whole batch in train mode (a D-only pass with frozen statistics
was tried: it drops that path and its hypergradient disagreed with the exact one, cosine often
< 0.9 on a trained student). Neither form changes the model's running statistics: their functional
forwards see copies of the buffers.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p for k, p in model.named_parameters() if p.requires_grad}


def buffer_copies(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the buffers, so a functional forward in train mode leaves the real running stats alone."""
    return {k: b.clone() for k, b in model.named_buffers()}


def virtual_step(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], lr: float) -> dict[str, torch.Tensor]:
    """theta' = theta - lr * g (plain SGD: the lookahead the meta objective is defined on)."""
    return {k: p.detach() - lr * grads[k] for k, p in params.items()}


def meta_loss_and_direction(model: nn.Module, params_virtual: dict[str, torch.Tensor], x_meta: torch.Tensor,
                            y_meta: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_meta(theta') on a labelled batch (train-mode BN, buffers untouched) and v = its gradient."""
    leaves = {k: p.detach().requires_grad_(True) for k, p in params_virtual.items()}
    logits = functional_call(model, {**leaves, **buffer_copies(model)}, (x_meta,))
    loss = F.cross_entropy(logits, y_meta)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return loss.detach(), dict(zip(leaves, grads))


def per_teacher_losses(logits: torch.Tensor, preds: torch.Tensor) -> torch.Tensor:
    """[N, B]: CE of the student's logits [B, C] against each teacher's label preds [N, B]."""
    logp = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    return -logp.gather(1, preds.t()).t()


def rng_snapshot(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The RNG state(s) a forward on `device` draws dropout from, to replay the same draws later."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _forward_replaying(model: nn.Module, params_and_buffers: dict, x: torch.Tensor, rng: tuple) -> torch.Tensor:
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.set_rng_state(rng[0])
        if rng[1] is not None:
            torch.cuda.set_rng_state(rng[1], x.device)
        return functional_call(model, params_and_buffers, (x,))


@torch.no_grad()
def fast_weight_grad(model: nn.Module, params: dict[str, torch.Tensor], direction: dict[str, torch.Tensor],
                     x: torch.Tensor, rows_d: torch.Tensor, base_logits_d: torch.Tensor | None, preds_d: torch.Tensor,
                     rng: tuple, lr: float, gamma: float, eps: float = 1e-3) -> torch.Tensor:
    """dL_meta/dw [|D|, N] by a finite difference along v.

    With `base_logits_d` (the real step's own logits for the disagreeing rows `rows_d` of the batch
    `x`), one extra forward at theta + h*v suffices: in train mode, replaying the real forward's
    dropout draws (`rng`), on copies of the buffers. The whole batch goes through it because
    BatchNorm's batch statistics depend on theta too. Without it (mixed precision: a low-precision
    forward cannot resolve a 1e-3 step), a central difference of two float32 forwards.
    """
    norm = torch.sqrt(sum((v.float() ** 2).sum() for v in direction.values()))
    if norm == 0:
        return torch.zeros(len(rows_d), preds_d.shape[0], device=x.device)
    h = eps / norm

    def losses_at(step: float) -> torch.Tensor:
        shifted = {k: p + step * direction[k] for k, p in params.items()}
        return per_teacher_losses(_forward_replaying(model, {**shifted, **buffer_copies(model)}, x, rng)[rows_d], preds_d)

    if base_logits_d is not None:
        directional = (losses_at(h) - per_teacher_losses(base_logits_d, preds_d)) / h  # [N, |D|]
    else:
        with torch.autocast(x.device.type, enabled=False):
            directional = (losses_at(h) - losses_at(-h)) / (2 * h)
    return (-lr * gamma / len(rows_d)) * directional.t()


def exact_head_grad(model: nn.Module, total_loss: Callable[[torch.Tensor, dict], torch.Tensor],
                    head_params: list[torch.Tensor], x_meta: torch.Tensor, y_meta: torch.Tensor, lr: float
                    ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Reference hypergradient d L_meta(theta - lr * grad L_total(theta, phi)) / d phi, second order.

    `total_loss(params_and_buffers)` must compute L_total through `functional_call` with the given
    dict (the head's output inside it keeps its graph to `head_params`). Buffers are copies.
    """
    params = {k: p.detach().requires_grad_(True) for k, p in trainable(model).items()}
    loss = total_loss({**params, **buffer_copies(model)})
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    virtual = {k: p - lr * g for (k, p), g in zip(params.items(), grads)}
    meta = F.cross_entropy(functional_call(model, {**virtual, **buffer_copies(model)}, (x_meta,)), y_meta)
    grads = torch.autograd.grad(meta, head_params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(head_params, grads)], meta.detach()
