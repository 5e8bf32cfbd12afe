"""Helpers for the COMPILE_SPECS that every kernel module exposes (see tests/kernels/test_amd_compile.py)."""
from __future__ import annotations

from typing import Iterable


def divisibility_attrs(fn, sig: dict, names: Iterable[str] = ()) -> dict:
    """The JIT's runtime specialisation at a representative shape, for triton ASTSource(attrs=):
    every pointer (16-byte aligned) and every named integer argument (e.g. a row stride that is a
    multiple of 16) is divisible by 16. Vectorised loads depend on it; compiled without these
    hints, kernels scalarise their loads and need several times the registers."""
    names = set(names)
    return {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
            if str(sig.get(name, "")).startswith("*") or name in names}
