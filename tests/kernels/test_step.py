"""advance_inputs (forge/kernels/step.py) against a NumPy reference: fresh random buffers, odd
batch sizes, flag 0 (no change but the flag) and flag 1 (rows < n move on one token)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from forge.kernels.step import advance_inputs


def _dev():
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("B", [1, 3, 16, 37, 512])
@pytest.mark.parametrize("flag", [0, 1])
def test_advance_inputs(B, flag):
    rng = np.random.default_rng()
    n = int(rng.integers(0, B + 1))
    tok = rng.integers(0, 2**31 - 1, B, dtype=np.int32)
    pos = rng.integers(0, 2**20, B, dtype=np.int32)
    seq = pos + 1
    slot = rng.integers(0, 2**40, B, dtype=np.int64)   # int64 slots past 2^32
    ids = rng.integers(0, 2**31 - 1, B, dtype=np.int64)
    dev = _dev()
    t = {k: torch.from_numpy(v.copy()).to(dev) for k, v in
         (("tok", tok), ("pos", pos), ("seq", seq), ("slot", slot), ("ids", ids))}
    meta = torch.tensor([n, flag], dtype=torch.int32, device=dev)
    advance_inputs(t["tok"], t["pos"], t["seq"], t["slot"], meta, t["ids"])
    want = {"tok": tok.copy(), "pos": pos.copy(), "seq": seq.copy(), "slot": slot.copy()}
    if flag:
        want["tok"][:n] = ids[:n]
        want["pos"][:n] += 1
        want["seq"][:n] += 1
        want["slot"][:n] += 1
    for k, v in want.items():
        np.testing.assert_array_equal(t[k].cpu().numpy(), v, err_msg=k)
    np.testing.assert_array_equal(t["ids"].cpu().numpy(), ids)
    assert meta.cpu().tolist() == [n, 1]


def test_advance_inputs_rejects_bad_buffers():
    dev = _dev()
    i32 = torch.zeros(4, dtype=torch.int32, device=dev)
    i64 = torch.zeros(4, dtype=torch.int64, device=dev)
    meta = torch.zeros(2, dtype=torch.int32, device=dev)
    with pytest.raises(ValueError, match="slot_mapping"):
        advance_inputs(i32, i32.clone(), i32.clone(), i32.clone(), meta, i64)
    with pytest.raises(ValueError, match="ids"):
        advance_inputs(i32, i32.clone(), i32.clone(), i64, meta, torch.zeros(3, dtype=torch.int64, device=dev))
    with pytest.raises(ValueError, match="meta"):
        advance_inputs(i32, i32.clone(), i32.clone(), i64, meta.long(), i64.clone())
