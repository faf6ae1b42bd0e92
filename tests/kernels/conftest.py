"""Fixtures of the kernel tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def two_torch_threads():
    """The compiled CPU code splits its work over torch.get_num_threads() threads: exercise two."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
