"""Shared test fixtures: where the real models are, and GPU detection."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _has_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


HAS_GPU = _has_gpu()
if not HAS_GPU:
    # Without a GPU every Triton kernel runs under the interpreter, which must be chosen before
    # the first kernel module is imported: the kernel test modules set it too, but a module that
    # only reads COMPILE_SPECS (test_amd_compile) may import the kernels first.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA/ROCm GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def find_model(name: str) -> Path | None:
    """A real model by its forge name: $FORGE_TEST_MODELS_DIR, then the hub cache."""
    from forge import hub

    env = os.environ.get("FORGE_TEST_MODELS_DIR")
    spec = hub.MODELS.get(name)
    if spec is None:
        raise KeyError(name)
    if env:
        p = Path(env) / spec.filename
        if p.exists():
            return p
    p = hub.cached_path(name)
    return p if p is not None and p.exists() else None


@pytest.fixture(scope="session")
def model_path():
    def get(name: str) -> Path:
        p = find_model(name)
        if p is None:
            pytest.skip(f"model {name} not available (run `forge pull {name}` or set FORGE_TEST_MODELS_DIR)")
        return p

    return get


@pytest.fixture
def rng(request):
    """A fresh random generator per test; the seed is printed on failure, and FORGE_TEST_SEED
    replays it."""
    import numpy as np

    seed = int(os.environ.get("FORGE_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
    request.node.user_properties.append(("seed", seed))
    print(f"rng seed: {seed}")
    return np.random.default_rng(seed)
