"""forge.kernels.env: TRITON_INTERPRET read the way Triton reads it, by every kernel module."""
import os
import subprocess
import sys

import pytest

from forge.kernels import env

VALUES = ["1", "0", "true", "TRUE", "false", "on", "off", "yes", "no", "2", "", " 1 "]


def test_truthy_values():
    assert [env.truthy(v) for v in VALUES] == [
        True, False, True, True, False, True, False, True, False, False, False, True]
    assert env.truthy(None) is False


def test_matches_tritons_own_parse():
    """Triton's knob (its C++ getenv_bool) and forge agree on every value, so a module never
    thinks it interprets while Triton compiles (or the reverse)."""
    lib = pytest.importorskip("triton._C.libtriton")
    getenv_bool = getattr(lib, "getenv_bool", None)
    if getenv_bool is None:
        pytest.skip("this Triton has no getenv_bool")
    key = "FORGE_TEST_ENV_FLAG"
    try:
        for v in VALUES:
            if v.strip() != v:
                continue  # (whitespace: Triton's C++ parse is not asked)
            os.environ[key] = v
            assert env.truthy(v) == bool(getenv_bool(key, False)), v
    finally:
        os.environ.pop(key, None)


@pytest.mark.parametrize("value,want", [("false", False), ("2", False), ("yes", True)])
def test_every_module_reads_it_one_way(value, want):
    """matmul, kgemm and gemv_async once took any value but ''/'0' as on ('false' interpreted
    there while Triton compiled); attention, pdl and precompile parsed it as Triton does."""
    code = ("import forge.kernels.matmul as m, forge.kernels.kgemm as k, "
            "forge.kernels.gemv_async as g, forge.kernels.attention as a, "
            "forge.kernels.pdl as p, forge.kernels.precompile as c; "
            "print(m._INTERPRET, k._INTERPRET, g._INTERPRET, a._INTERPRET, "
            "not p._supported() if %s else None, not c.supported() if %s else None)"
            % (want, want))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "TRITON_INTERPRET": value}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = out.stdout.split()
    assert got[:4] == [str(want)] * 4, got
    if want:
        assert got[4:] == ["True", "True"], got
