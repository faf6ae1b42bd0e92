"""The one thread rule: usable cores less the busy ones, shared by processes, within [1, torch's default]."""

from __future__ import annotations

import argparse

import pytest
import torch

from mevos.errors import UsageError
from mevos.runtime import threads


@pytest.mark.parametrize(
    "cores, load, processes, torch_default, want",
    [
        (2, 0.0, 1, 2, 2),  # idle: every core
        (2, 1.2, 1, 2, 1),  # one busy job on 2 cores: one thread, never two that wait on each other
        (2, 5.0, 1, 2, 1),  # overloaded: still one
        (16, 3.4, 1, 8, 8),  # never more than torch's default (physical cores)
        (16, 3.6, 1, 64, 12),
        (16, 0.0, 4, 64, 4),  # torchrun with 4 processes shares the cores
        (2, 0.0, 4, 2, 1),
    ],
)
def test_default_threads(monkeypatch, cores, load, processes, torch_default, want):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(threads, "_TORCH_DEFAULT", torch_default)
    assert threads.default_threads(processes) == want


def test_configure_threads_sets_torch_and_refuses_bad_values(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert threads.configure_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr(threads, "default_threads", lambda processes=1: 2)
        assert threads.configure_threads(None) == 2 and torch.get_num_threads() == 2
        for bad in (0, -1, 1.5, True):
            with pytest.raises(UsageError, match="--threads"):
                threads.configure_threads(bad)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("module", ["mevos.runtime.cli", "mevos.bench.cli", "mevos.train.cli"])
def test_model_commands_take_threads(module):
    import importlib

    parser = argparse.ArgumentParser()
    importlib.import_module(module).add_arguments(parser)
    assert any("--threads" in a.option_strings for a in parser._actions)
