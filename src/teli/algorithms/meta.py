"""TELI with a meta-learned lambda head: per unlabelled image, the teachers' logits decide how much to
trust each teacher where they disagree, and the head learns whatever makes the student's next step
do best on labelled data (one-step lookahead; the maths is in teli.hypergrad).

One step:
  1. w = head(z_1 || ... || z_N) for the batch's unlabelled images (cached teacher logits).
  2. Real loss L_total(theta, w) with w held fixed; its gradient g fills the student's .grad (the engine
     then takes the optimizer step). g is also exactly the virtual step's gradient: theta' = theta - eta*g.
  3. v = grad L_meta(theta') on a labelled (or held-out) batch.
  4. dL_meta/dw by the fast finite difference over the disagreeing images, or the exact second-order
     reference; backpropagated through the head; one Adam step on the head.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from teli.config import TeliConfig
from teli.engine import StepContext, StepOutput
from teli.hypergrad import exact_head_grad, fast_weight_grad, meta_loss_and_direction, rng_snapshot, trainable, virtual_step
from teli.labels import pair_weights
from teli.algorithms.teli import TeliStudent, student_view


class LambdaHead(nn.Module):
    """Teachers' logits for one image [N, C] -> simplex weights [N]; for two teachers, (lambda, 1 - lambda)
    with lambda = sigmoid(.), the original's Dropout -> Linear(2C, 32) -> ReLU -> Linear(32, 1)."""

    def __init__(self, num_teachers: int, num_classes: int, hidden: int = 32, dropout: float = 0.2):
        super().__init__()
        self.num_teachers = num_teachers
        out = 1 if num_teachers == 2 else num_teachers
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(num_teachers * num_classes, hidden), nn.ReLU(), nn.Linear(hidden, out))

    def forward(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """teacher_logits [N, B, C] -> weights [B, N]."""
        z = self.net(teacher_logits.to(self.net[1].weight.dtype).permute(1, 0, 2).flatten(1))
        return pair_weights(torch.sigmoid(z[:, 0])) if self.num_teachers == 2 else F.softmax(z, dim=-1)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # Lightning Fabric wraps the model; torch.func wants the module


class MetaTeliStudent(TeliStudent):
    name = "teli-meta"

    def __init__(self, model: nn.Module, teacher_logits: torch.Tensor, cfg: TeliConfig, rng: np.random.Generator,
                 meta_set: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__(model, teacher_logits, cfg, rng)
        self.head = LambdaHead(self.num_teachers, self.num_classes, cfg.meta_hidden, cfg.meta_dropout).to(teacher_logits.device)
        self.head_optimizer = torch.optim.Adam(self.head.parameters(), lr=cfg.meta_lr)
        self.extra_modules = {"lambda_head": self.head}
        self.extra_optimizers = {"lambda_head": self.head_optimizer}
        self.meta_set = meta_set  # (prepared images, labels) when cfg.meta_source == "val"
        self.meta_generator = torch.Generator(device="cpu").manual_seed(int(rng.integers(2**31)))

    def meta_batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.meta_set is None:
            return batch["x_l"], batch["y_l"]
        x, y = self.meta_set
        idx = torch.randint(len(x), (len(batch["x_l"]),), generator=self.meta_generator).to(x.device)
        return x[idx], y[idx]

    @torch.no_grad()
    def pool_weights(self) -> torch.Tensor:
        """The head's weights [U, N] for every image of the pool (eval mode): for diagnostics."""
        self.head.eval()
        weights = self.head(self.teacher_logits)
        self.head.train()
        return weights

    def losses(self, batch: dict[str, torch.Tensor], weights_d: torch.Tensor, net: nn.Module, params_and_buffers: dict | None = None):
        """Logits of the whole batch, L_total and its terms, with weights_d [|D|, N] on the batch's
        disagreeing images. A plain forward of `self.model`, or a functional one with the given
        parameters and buffers."""
        x_l, y_l, idx_u = batch["x_l"], batch["y_l"], batch["idx_u"]
        x = torch.cat([x_l, student_view(batch)])
        logits = self.model(x) if params_and_buffers is None else torch.func.functional_call(net, params_and_buffers, (x,))
        disagree = self.labels.disagree[idx_u]
        weights = torch.zeros(len(idx_u), self.num_teachers, dtype=weights_d.dtype, device=weights_d.device)
        weights = weights.index_put((disagree.nonzero().flatten(),), weights_d)  # rows outside D are unused
        loss_labelled = F.cross_entropy(logits[: len(x_l)], y_l)
        terms = self.unlabelled_losses(logits[len(x_l) :], idx_u, weights)
        return logits, self.total_loss(loss_labelled, terms), loss_labelled, terms

    def head_grads(self, batch: dict[str, torch.Tensor], weights_d: torch.Tensor, logits: torch.Tensor,
                   rng: tuple, lr: float) -> tuple[list[torch.Tensor], torch.Tensor]:
        """d L_meta(theta - lr * grad L_total) / d phi for the head's parameters, by `cfg.meta_method`.

        The fast form needs the student's .grad to hold grad L_total(theta) (the real step's backward),
        `logits` from that step's forward and the RNG state from before it (same dropout draws).
        """
        net = unwrap(self.model)
        x_meta, y_meta = self.meta_batch(batch)
        head_params = list(self.head.parameters())
        if self.cfg.meta_method == "exact":
            return exact_head_grad(net, lambda pb: self.losses(batch, weights_d, net, pb)[1], head_params, x_meta, y_meta, lr)
        params = trainable(net)
        virtual = virtual_step(params, {k: p.grad for k, p in params.items()}, lr)
        meta_loss, direction = meta_loss_and_direction(net, virtual, x_meta, y_meta)
        disagree = self.labels.disagree[batch["idx_u"]]
        rows_d = len(batch["x_l"]) + disagree.nonzero().flatten()
        preds_d = self.labels.preds[:, batch["idx_u"]][:, disagree]
        x = torch.cat([batch["x_l"], student_view(batch)])
        mixed = torch.is_autocast_enabled(x.device.type)  # then the real forward's logits are too coarse a base
        grad_w = fast_weight_grad(net, {k: p.detach() for k, p in params.items()}, direction, x, rows_d,
                                  None if mixed else logits[rows_d].detach(), preds_d, rng, lr, self.cfg.gamma,
                                  self.cfg.meta_fd_eps)
        grads = torch.autograd.grad(weights_d, head_params, grad_outputs=grad_w.to(weights_d.dtype), allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(head_params, grads)], meta_loss

    def train_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> StepOutput:
        net = unwrap(self.model)
        idx_u = batch["idx_u"]
        disagree = self.labels.disagree[idx_u]
        weights_d = self.head(self.teacher_logits[:, idx_u[disagree]])  # [|D|, N], keeps its graph to the head
        rng = rng_snapshot(batch["x_l"].device)
        logits, total, loss_labelled, terms = self.losses(batch, weights_d.detach(), net)
        ctx.backward(total)  # g = grad L_total: the real step's gradient, and the virtual step's

        logs = {"loss_labelled": loss_labelled.detach(), **{k: v.detach() for k, v in terms.items()},
                "frac_agree": self.labels.agree[idx_u].float().mean(), "frac_disagree": disagree.float().mean()}
        if len(weights_d) and self.cfg.gamma > 0 and ctx.step % self.cfg.meta_every == 0:
            grads, meta_loss = self.head_grads(batch, weights_d, logits, rng, ctx.lr)
            for p, g in zip(self.head.parameters(), grads):
                p.grad = g
            self.head_optimizer.step()
            logs["loss_meta"] = meta_loss
        if len(weights_d):
            logs["lambda_mean"] = weights_d[:, 0].mean().detach()
            logs["lambda_std"] = weights_d[:, 0].std(unbiased=False).detach()
        return StepOutput(total.detach(), logs, backward_done=True)
