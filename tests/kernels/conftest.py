"""Fixtures shared by the kernel tests."""
import contextlib

import pytest
import torch


@pytest.fixture
def nan_empty(monkeypatch):
    """Make torch.empty return NaN-filled float tensors, so unwritten outputs show up."""
    real = torch.empty

    def empty(*a, **kw):
        t = real(*a, **kw)
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", empty)


@pytest.fixture
def tuning_table():
    """Lay an in-memory tuning table over every other one for the rest of the test (the linear
    launchers' config cache cleared on each change)."""
    from forge.kernels import matmul as mm
    from forge.kernels import tuning

    stack = contextlib.ExitStack()

    def install(kernels: dict):
        stack.close()
        stack.enter_context(tuning.override(kernels))
        mm.clear_config_cache()

    yield install
    stack.close()
    mm.clear_config_cache()
