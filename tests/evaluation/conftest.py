"""Fixtures for the evaluation tests: a tiny defect classifier on the tiny checkpoint's categories."""

from __future__ import annotations

import pytest

TINY_CATEGORIES = ("scratch", "hole", "black spot")


@pytest.fixture(autouse=True)
def _one_thread():
    """The evaluation tests are tiny; one thread keeps them polite on shared CI machines."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_classifier():
    """Trained on 12 defects per category (+ the same at 64×64 generation size), tested on 6."""
    from unidg_rt.evaluation import train_classifier

    return train_classifier(TINY_CATEGORIES, gen_size=(64, 64), n_train=12, n_test=6)
