"""The labelled / held-out / unlabelled split of a training pool: k per class, stratified, seeded."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from teli.errors import TeliError


@dataclass(frozen=True)
class Split:
    labelled: torch.Tensor  # indices into the pool
    val: torch.Tensor  # held-out labelled images (model selection, meta objective); may be empty
    unlabelled: torch.Tensor  # the rest of the pool; its labels are for diagnostics only


def split_pool(labels: torch.Tensor, num_classes: int, labels_per_class: int, val_per_class: int, seed: int) -> Split:
    if labels_per_class < 1:
        raise TeliError(f"labels_per_class is {labels_per_class}: it must be at least 1")
    generator = torch.Generator().manual_seed(seed)
    need = labels_per_class + val_per_class
    labelled, val = [], []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        if len(members) < need:
            raise TeliError(
                f"class {c} has {len(members)} training images, fewer than the {need} asked for "
                f"(labels_per_class={labels_per_class} + val_per_class={val_per_class}): lower them"
            )
        chosen = members[torch.randperm(len(members), generator=generator)[:need]]
        labelled.append(chosen[:labels_per_class])
        val.append(chosen[labels_per_class:])
    labelled_idx = torch.cat(labelled).sort().values
    val_idx = torch.cat(val).sort().values
    taken = torch.zeros(len(labels), dtype=torch.bool)
    taken[labelled_idx] = True
    taken[val_idx] = True
    unlabelled_idx = torch.nonzero(~taken).flatten()
    if len(unlabelled_idx) == 0:
        raise TeliError("the unlabelled set is empty: every image is labelled; lower labels_per_class")
    return Split(labelled=labelled_idx, val=val_idx, unlabelled=unlabelled_idx)
