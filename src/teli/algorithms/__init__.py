"""Algorithms: small plug-ins of the training engine (`train_step(batch, ctx) -> StepOutput`)."""

from teli.algorithms.supervised import Supervised
from teli.algorithms.teli import TeliStudent

__all__ = ["Supervised", "TeliStudent"]
