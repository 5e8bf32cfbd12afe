"""Decode-step input bookkeeping on the device, for run-ahead decode (runtime/graphs.py).

`advance_inputs` is the first kernel of every captured decode graph. The rung's int32 input
buffer carries two control words, meta = (n, flag): n real sequences (rows past n are padding),
and flag, which the host's fill of fresh inputs sets to 0 and this kernel sets to 1. A replay
right after a fill therefore computes the filled step; a replay without a fill computes the
NEXT step of the same sequences: each of the n rows moves on one position (position, context
length and cache slot + 1; the caller guarantees the next position is in the same block) and
takes as its token the id this rung's graph sampled last (`ids`, written by the in-graph
argmax or by the host's sampler).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from forge.kernels import pdl
from forge.kernels.pdl import pdl_launch, pdl_wait


@triton.jit
def _advance_kernel(tok_ptr, pos_ptr, seq_ptr, slot_ptr, meta_ptr, ids_ptr, BLOCK: tl.constexpr,
                    PDL: tl.constexpr):
    pdl_launch(PDL)
    pdl_wait(PDL)           # meta, ids and the inputs are written by earlier work
    n = tl.load(meta_ptr)
    flag = tl.load(meta_ptr + 1)
    i = tl.arange(0, BLOCK)
    m = i < tl.where(flag != 0, n, 0)
    tl.store(tok_ptr + i, tl.load(ids_ptr + i, mask=m, other=0).to(tl.int32), mask=m)
    tl.store(pos_ptr + i, tl.load(pos_ptr + i, mask=m, other=0) + 1, mask=m)
    tl.store(seq_ptr + i, tl.load(seq_ptr + i, mask=m, other=0) + 1, mask=m)
    tl.store(slot_ptr + i, tl.load(slot_ptr + i, mask=m, other=0) + 1, mask=m)
    tl.debug_barrier()      # every thread has read the flag (the stores above depend on it)
    tl.store(meta_ptr + 1, 1)


def advance_inputs(token_ids: torch.Tensor, positions: torch.Tensor, seq_lens: torch.Tensor,
                   slot_mapping: torch.Tensor, meta: torch.Tensor, ids: torch.Tensor) -> None:
    """In place, on the device (see the module notes): if meta[1] != 0, rows i < meta[0] get
    token_ids[i] = ids[i], positions/seq_lens/slot_mapping[i] += 1; then meta[1] = 1.
    token_ids, positions, seq_lens, meta: int32; slot_mapping, ids: int64; all [B] (meta [2])."""
    B = token_ids.shape[0]
    for name, t, dt in (("token_ids", token_ids, torch.int32), ("positions", positions, torch.int32),
                        ("seq_lens", seq_lens, torch.int32), ("slot_mapping", slot_mapping, torch.int64),
                        ("ids", ids, torch.int64)):
        if t.dtype != dt or t.shape != (B,) or not t.is_contiguous() or t.device != token_ids.device:
            raise ValueError(f"{name}: expected contiguous {dt} [{B}] on {token_ids.device}, "
                             f"got {t.dtype} {tuple(t.shape)} on {t.device}")
    if meta.dtype != torch.int32 or meta.shape != (2,) or meta.device != token_ids.device:
        raise ValueError(f"meta: expected int32 [2] on {token_ids.device}, got {meta.dtype} "
                         f"{tuple(meta.shape)}")
    _advance_kernel[(1,)](token_ids, positions, seq_lens, slot_mapping, meta, ids,
                          BLOCK=max(16, triton.next_power_of_2(B)), num_warps=1,
                          **pdl.launch_args())


COMPILE_SPECS: list[dict] = [
    {"name": f"advance_B{b}", "fn": _advance_kernel,
     "signature": {"tok_ptr": "*i32", "pos_ptr": "*i32", "seq_ptr": "*i32", "slot_ptr": "*i64",
                   "meta_ptr": "*i32", "ids_ptr": "*i64", "BLOCK": "constexpr", "PDL": "constexpr"},
     "constexprs": {"BLOCK": b, "PDL": False}, "num_warps": w, "num_stages": 1}
    for b, w in ((16, 1), (512, 1))
]
COMPILE_SPECS += [pdl.with_pdl(s) for s in COMPILE_SPECS]   # as Hopper launches it
