"""Shared fixtures: tiny budgets, the digits data split once per session, a CLI runner."""

from __future__ import annotations

import pytest
import torch

from teli.config import build_config
from teli.data import load_dataset, make_ssl_data, split_pool

# Budgets small enough that a whole `teli run` takes about a second on two slow vCPUs.
TINY = ["--set", "teachers.optim.steps=20", "--steps", "20", "--quiet", "--threads", "1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    """Keep torch's thread count fixed across tests (setup_fabric changes it globally)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def ssl_data(digits):
    """Digits split with 5 labels per class (seed 0), as the default run does."""
    split = split_pool(digits.y_train, digits.num_classes, 5, 0, seed=0)
    return make_ssl_data(digits, split)


@pytest.fixture
def tiny_config(tmp_path):
    """A RunConfig with tiny budgets writing under tmp_path."""
    return build_config(overrides={
        "out_dir": str(tmp_path / "runs"),
        "progress": False,
        "threads": 1,
        "teachers.optim.steps": 20,
        "student.optim.steps": 20,
    })
