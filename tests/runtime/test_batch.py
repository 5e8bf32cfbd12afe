"""build_batch_arrays: a hand-built step with hand-computed answers, and random scheduler steps
against a plain per-token loop."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from forge.runtime.backend import ForwardBatch
from forge.runtime.batch import build_batch_arrays, make_forward_batch
from forge.runtime.kv_cache import BlockPool
from forge.runtime.request import Request
from forge.runtime.scheduler import Scheduler, ScheduledSeq, SchedulerOutput

P = SimpleNamespace(max_tokens=8, stop_token_ids=[], ignore_eos=False)


def hand_step():
    # block_size 4.
    # A: decode. prompt 10..15 (6 tokens) + output [99]; 6 computed; computes token 99 at pos 6.
    a = Request("A", [10, 11, 12, 13, 14, 15], P, output_token_ids=[99], num_computed_tokens=6,
                block_ids=[5, 2, 8])
    # B: first chunk of a 10-token prompt: positions 0..4 in blocks 7, 3.
    b = Request("B", list(range(20, 30)), P, block_ids=[7, 3])
    # C: prompt 40..44, first block a prefix-cache hit; computes position 4 (block 1, offset 0).
    c = Request("C", [40, 41, 42, 43, 44], P, num_computed_tokens=4, block_ids=[9, 1])
    seqs = [ScheduledSeq(a, 6, 1, True), ScheduledSeq(b, 0, 5, False), ScheduledSeq(c, 4, 1, True)]
    return SchedulerOutput(seqs=seqs, num_tokens=7)


def test_hand_built_step():
    got = build_batch_arrays(hand_step(), 4)
    want = {
        "token_ids": [99, 20, 21, 22, 23, 24, 44],
        "positions": [6, 0, 1, 2, 3, 4, 4],
        "query_start_loc": [0, 1, 6, 7],
        "seq_lens": [7, 5, 5],
        "block_tables": [[5, 2, 8], [7, 3, 0], [9, 1, 0]],
        # A pos 6 -> block 2 (2nd), offset 2 -> 10; B pos 0..3 -> block 7 -> 28..31, pos 4 ->
        # block 3 offset 0 -> 12; C pos 4 -> block 1 offset 0 -> 4
        "slot_mapping": [10, 28, 29, 30, 31, 12, 4],
        "logits_indices": [0, 6],
    }
    dtypes = {"token_ids": np.int32, "positions": np.int32, "query_start_loc": np.int32,
              "seq_lens": np.int32, "block_tables": np.int32, "slot_mapping": np.int64,
              "logits_indices": np.int64}
    for k, v in want.items():
        assert got[k].dtype == dtypes[k], k
        assert got[k].tolist() == v, k
    assert (got["max_query_len"], got["max_seq_len"], got["num_seqs"], got["num_tokens"]) == \
        (5, 7, 3, 7)
    assert set(got) == set(ForwardBatch.__slots__) - {"host"}


def test_padding_and_errors():
    out = hand_step()
    got = build_batch_arrays(out, 4, num_block_cols=5)
    assert got["block_tables"].tolist() == [[5, 2, 8, 0, 0], [7, 3, 0, 0, 0], [9, 1, 0, 0, 0]]
    with pytest.raises(ValueError, match="num_block_cols"):
        build_batch_arrays(out, 4, num_block_cols=2)
    out.seqs[1].request.block_ids = [7]
    with pytest.raises(ValueError, match="'B' holds 1 blocks, too few for 5 tokens"):
        build_batch_arrays(out, 4)
    with pytest.raises(ValueError, match="nothing is scheduled"):
        build_batch_arrays(SchedulerOutput(), 4)
    with pytest.raises(ValueError, match="block_size"):
        build_batch_arrays(hand_step(), 0)


def test_make_forward_batch_keeps_host_copies():
    class Be:
        def asarray(self, x, dtype=None):
            return ("dev", x)

    fb = make_forward_batch(hand_step(), 4, Be())
    assert isinstance(fb, ForwardBatch)
    assert fb.slot_mapping[0] == "dev" and fb.slot_mapping[1] is fb.host["slot_mapping"]
    assert fb.num_tokens == 7 and fb.max_seq_len == 7


def naive(out, bs):
    """One token at a time, the obvious way."""
    tok, pos, slot, qsl, lens, li = [], [], [], [0], [], []
    for s in out.seqs:
        r = s.request
        for p in range(s.start, s.end):
            tok.append(r.all_token_ids[p])
            pos.append(p)
            slot.append(r.block_ids[p // bs] * bs + p % bs)
        qsl.append(qsl[-1] + s.num_new_tokens)
        lens.append(s.end)
        if s.sample:
            li.append(qsl[-1] - 1)
    w = max(len(s.request.block_ids) for s in out.seqs)
    bt = [s.request.block_ids + [0] * (w - len(s.request.block_ids)) for s in out.seqs]
    return {"token_ids": tok, "positions": pos, "slot_mapping": slot, "query_start_loc": qsl,
            "seq_lens": lens, "logits_indices": li, "block_tables": bt}


def test_random_scheduler_steps_match_naive(rng):
    bs = int(rng.integers(1, 9))
    pool = BlockPool(int(rng.integers(40, 80)), bs)
    s = Scheduler(pool, max_num_seqs=5, max_num_batched_tokens=int(rng.integers(8, 40)),
                  max_model_len=200, long_prefill_chunk=int(rng.integers(3, 20)))
    shared = rng.integers(0, 1000, 2 * bs).tolist()
    for i in range(12):
        prompt = rng.integers(0, 1000, int(rng.integers(1, 30))).tolist()
        if i % 2:
            prompt = shared + prompt
        s.add(Request(f"r{i}", prompt, SimpleNamespace(max_tokens=int(rng.integers(1, 12)))))
    n = 0
    while s.has_unfinished():
        out = s.schedule()
        got = build_batch_arrays(out, bs)
        for k, v in naive(out, bs).items():
            assert got[k].tolist() == v, k
        s.update(out, rng.integers(0, 1000, len(out.sampling)).tolist())
        n += 1
    assert n > 5
