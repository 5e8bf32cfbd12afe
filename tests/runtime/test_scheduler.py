"""Scheduler: budgets, chunked prefill, FIFO, seq limits, aborts, capacity errors, stops, and a
fake-model run through a pool too small for all requests (preemption + recompute)."""
from __future__ import annotations

import zlib
from types import SimpleNamespace

import numpy as np
import pytest

from forge.errors import RequestError
from forge.runtime.batch import build_batch_arrays
from forge.runtime.kv_cache import NULL_BLOCK, BlockPool
from forge.runtime.request import Request, RequestStatus
from forge.runtime.scheduler import Scheduler


def params(max_tokens=16, stop_token_ids=(), ignore_eos=False):
    return SimpleNamespace(max_tokens=max_tokens, stop_token_ids=list(stop_token_ids),
                           ignore_eos=ignore_eos)


def req(rid, n_or_tokens, max_tokens=16, **kw):
    toks = list(range(1, n_or_tokens + 1)) if isinstance(n_or_tokens, int) else n_or_tokens
    return Request(rid, toks, params(max_tokens, **kw))


def spans(out):
    return [(s.request.request_id, s.start, s.num_new_tokens, s.sample) for s in out.seqs]


def step(s, out, token=7):
    return s.update(out, {r.request_id: token for r in out.sampling})


def check_pool(s: Scheduler):
    """Only running requests hold blocks, and the pool's ref counts say exactly that."""
    pool = s.pool
    refs = [0] * pool.num_blocks
    for r in s.running:
        assert r.status is RequestStatus.RUNNING
        assert len(r.block_ids) >= pool.blocks_needed(r.num_computed_tokens)
        for b in r.block_ids:
            refs[b] += 1
    for r in s.waiting:
        assert r.block_ids == [] and r.num_computed_tokens == 0
    assert refs[NULL_BLOCK] == 0
    assert refs[1:] == pool.ref_counts[1:]
    assert pool.num_free == sum(1 for c in refs[1:] if c == 0)


# ---- admission errors ------------------------------------------------------------------------
def test_capacity_rejections_name_the_numbers():
    s = Scheduler(BlockPool(9, 4), 4, 64, max_model_len=40)  # cache holds 32 tokens
    with pytest.raises(RequestError, match="prompt has 40 tokens but the context is 40"):
        s.add(req("a", 40))
    with pytest.raises(RequestError, match="prompt has 50 tokens but the context is 40"):
        s.add(req("a", 50))
    with pytest.raises(RequestError, match="max_tokens is 11.*context of 40"):
        s.add(req("a", 30, max_tokens=11))
    with pytest.raises(RequestError, match="needs room for 34 tokens but holds only 32"):
        s.add(req("a", 30, max_tokens=5))
    with pytest.raises(RequestError, match="empty"):
        s.add(Request("e", [], params()))
    s.add(req("ok", 30, max_tokens=3))  # 32 tokens of K/V: fits exactly
    with pytest.raises(ValueError, match="already in use"):
        s.add(req("ok", 3))
    assert s.num_waiting == 1


def test_request_validation():
    with pytest.raises(ValueError, match="max_tokens"):
        Request("x", [1], params(max_tokens=0))
    with pytest.raises(ValueError, match="request_id"):
        Request("", [1], params())
    with pytest.raises(ValueError, match="negative"):
        Request("x", [1, -2], params())
    with pytest.raises(ValueError, match="max_num_seqs"):
        Scheduler(BlockPool(8, 4), 0, 16, 32)


# ---- chunking and budgets --------------------------------------------------------------------
def test_chunked_prefill_splits_a_long_prompt():
    s = Scheduler(BlockPool(64, 4), 4, max_num_batched_tokens=16, max_model_len=128)
    s.add(req("a", 50, max_tokens=2))
    got = []
    while s.has_unfinished():
        out = s.schedule()
        got.append(spans(out))
        step(s, out)
    assert got == [[("a", 0, 16, False)], [("a", 16, 16, False)], [("a", 32, 16, False)],
                   [("a", 48, 2, True)], [("a", 50, 1, True)]]


def test_long_prefill_chunk_shares_budget_with_decodes():
    s = Scheduler(BlockPool(64, 4), 4, max_num_batched_tokens=16, max_model_len=128,
                  long_prefill_chunk=6)
    s.add(req("a", 3, max_tokens=5))
    step(s, s.schedule())                      # a: prompt, first token
    s.add(req("b", 20, max_tokens=1))
    s.add(req("c", list(range(30, 50)), max_tokens=1))
    out = s.schedule()
    assert spans(out) == [("a", 3, 1, True), ("b", 0, 6, False), ("c", 0, 6, False)]
    assert out.num_tokens == 13


def test_budget_and_seq_limits_every_step(rng):
    s = Scheduler(BlockPool(200, 8), max_num_seqs=3, max_num_batched_tokens=20,
                  max_model_len=256, long_prefill_chunk=12)
    for i in range(10):
        s.add(req(f"r{i}", int(rng.integers(1, 60)), max_tokens=int(rng.integers(1, 10))))
    steps = 0
    while s.has_unfinished():
        out = s.schedule()
        assert out.num_tokens == sum(x.num_new_tokens for x in out.seqs) <= 20
        assert out.num_seqs <= 3 and s.num_running <= 3
        assert all(x.num_new_tokens <= 12 for x in out.seqs)
        assert len({x.request.request_id for x in out.seqs}) == out.num_seqs
        step(s, out)
        check_pool(s)
        steps += 1
    assert steps < 200
    assert s.pool.num_free == s.pool.num_usable


def test_fifo_admission():
    s = Scheduler(BlockPool(64, 4), max_num_seqs=8, max_num_batched_tokens=10, max_model_len=64)
    for i, rid in enumerate("abcd"):
        s.add(req(rid, list(range(10 * i + 1, 10 * i + 7)), max_tokens=1))
    first = [spans(s.schedule())]
    assert first == [[("a", 0, 6, True), ("b", 0, 4, False)]]
    # head of the queue blocks: a later short prompt does not jump it
    s2 = Scheduler(BlockPool(5, 4), max_num_seqs=8, max_num_batched_tokens=64, max_model_len=64)
    s2.add(req("big", 12, max_tokens=2))
    s2.add(req("big2", list(range(20, 32)), max_tokens=2))
    s2.add(req("small", 1, max_tokens=2))
    assert [x[0] for x in spans(s2.schedule())] == ["big"]


def test_max_num_seqs():
    s = Scheduler(BlockPool(64, 4), max_num_seqs=2, max_num_batched_tokens=64, max_model_len=64)
    for rid in "abcde":
        s.add(req(rid, 3, max_tokens=2))
    order = []
    while s.has_unfinished():
        out = s.schedule()
        assert out.num_seqs <= 2
        order.append(sorted(x.request.request_id for x in out.seqs))
        step(s, out)
    assert order == [["a", "b"], ["a", "b"], ["c", "d"], ["c", "d"], ["e"], ["e"]]


# ---- abort, stops ----------------------------------------------------------------------------
def test_abort_frees_blocks_waiting_running_and_in_flight():
    pool = BlockPool(32, 4)
    s = Scheduler(pool, 4, 64, 64)
    s.add(req("a", 10))
    s.add(req("b", 9))
    step(s, s.schedule())
    assert pool.num_free < pool.num_usable
    s.add(req("w", 5))
    assert s.abort("w").finish_reason == "abort" and s.num_waiting == 0
    a = s.abort("a")
    assert a.status is RequestStatus.FINISHED_ABORTED and a.block_ids == []
    assert s.abort("a") is None and s.abort("nope") is None
    check_pool(s)
    out = s.schedule()                      # b decodes
    before = pool.num_free
    assert s.abort("b") is not None         # during the step: takes effect in update
    assert pool.num_free == before and s.running
    fin = step(s, out)
    assert [r.request_id for r in fin] == ["b"] and fin[0].output_token_ids == [7]
    assert pool.num_free == pool.num_usable and not s.has_unfinished()


def test_stop_tokens_eos_and_length():
    s = Scheduler(BlockPool(64, 4), 8, 64, 64, eos_token_ids=[2])
    s.add(req("eos", 3))
    s.add(req("ign", 3, ignore_eos=True, max_tokens=3))
    s.add(req("stop", 3, stop_token_ids=[5]))
    s.add(req("len", 3, max_tokens=2))
    fin = s.update(s.schedule(), {"eos": 2, "ign": 2, "stop": 4, "len": 4})
    assert [r.request_id for r in fin] == ["eos"] and fin[0].finish_reason == "stop"
    fin = s.update(s.schedule(), [2, 5, 4])  # in sampling order: ign, stop, len
    assert sorted((r.request_id, r.finish_reason) for r in fin) == [("len", "length"),
                                                                    ("stop", "stop")]
    fin = s.update(s.schedule(), {"ign": [9]}, logprobs={"ign": [-0.5]})
    assert fin[0].output_token_ids == [2, 2, 9] and fin[0].finish_reason == "length"
    assert fin[0].output_logprobs == [-0.5]
    assert not s.has_unfinished()


def test_max_tokens_none_runs_to_the_context():
    s = Scheduler(BlockPool(64, 4), 8, 64, max_model_len=12)
    s.add(req("a", 5, max_tokens=None))
    n = 0
    while s.has_unfinished():
        fin = step(s, s.schedule())
        n += 1
    assert len(fin[0].output_token_ids) == 7 and fin[0].finish_reason == "length"


def test_update_checks_its_input():
    s = Scheduler(BlockPool(64, 4), 8, 64, 64)
    s.add(req("a", 3))
    out = s.schedule()
    with pytest.raises(RuntimeError, match="before update"):
        s.schedule()
    with pytest.raises(ValueError, match="no entry"):
        s.update(out, {})
    s.add(req("b", 3))
    step(s, out)
    with pytest.raises(RuntimeError, match="last schedule"):
        s.update(out, {"a": 1})


# ---- prefix cache and preemption -------------------------------------------------------------
def test_prefix_cache_hit_counts_as_computed():
    s = Scheduler(BlockPool(64, 4), 8, 64, 64)
    shared = list(range(100, 112))                  # three full blocks
    s.add(Request("a", shared + [1, 2], params(2)))
    while s.has_unfinished():
        step(s, s.schedule())
    s.add(Request("b", shared + [3], params(2)))
    s.add(Request("c", shared, params(2)))          # all 3 blocks cached, but 1 token must run
    out = s.schedule()
    assert spans(out) == [("b", 12, 1, True), ("c", 8, 4, True)]
    assert out.num_cached_tokens == 20
    b, c = (x.request for x in out.seqs)
    assert b.block_ids[:3] == c.block_ids[:2] + [b.block_ids[2]]
    check_pool(s)


def test_preemption_picks_newest_and_keeps_output():
    pool = BlockPool(7, 2)                          # 6 usable blocks = 12 tokens
    s = Scheduler(pool, 8, 64, 64)
    s.add(req("old", 3, max_tokens=8))
    s.add(req("new", [4, 5, 6], max_tokens=8))
    for _ in range(5):
        step(s, s.schedule(), token=9)
    # in step 5 both need a 4th block (7 tokens) but the 6 blocks are taken: new is preempted
    assert s.num_preemptions >= 1
    new = s.requests["new"]
    assert s.requests["old"].num_preemptions == 0
    assert new.num_preemptions >= 1 and new.output_token_ids == [9, 9, 9, 9]
    kept = 4
    while s.has_unfinished():
        out = s.schedule()
        for r in out.preempted:
            assert r is new and s.waiting[0] is new
            assert r.output_token_ids == [9] * kept
        kept = len(new.output_token_ids)
        step(s, out, token=9)
        check_pool(s)
    assert new.output_token_ids == [9] * 8
    assert pool.num_free == pool.num_usable


# ---- the fake model --------------------------------------------------------------------------
VOCAB, EOS = 61, 0


def next_token(tokens) -> int:
    return zlib.crc32(np.asarray(tokens, np.int64).tobytes()) % VOCAB


def reference(prompt, max_tokens):
    toks = list(prompt)
    out = []
    for _ in range(max_tokens):
        t = next_token(toks)
        out.append(t)
        toks.append(t)
        if t == EOS:
            break
    return out


class FakeModel:
    """Writes (token, position) into a paged 'KV cache' at slot_mapping and reads each sampling
    sequence's context back through its block table: the next token is a hash of what it reads."""

    def __init__(self, num_blocks, block_size):
        self.bs = block_size
        self.tok = np.full(num_blocks * block_size, -1, np.int64)
        self.pos = np.full(num_blocks * block_size, -1, np.int64)

    def forward(self, out):
        a = build_batch_arrays(out, self.bs)
        slots = a["slot_mapping"]
        assert (slots >= self.bs).all(), "a token was written into the null block"
        assert len(np.unique(slots)) == len(slots)
        self.tok[slots] = a["token_ids"]
        self.pos[slots] = a["positions"]
        sampled = {}
        rows = iter(a["logits_indices"])
        for b, s in enumerate(out.seqs):
            assert a["seq_lens"][b] == s.end
            if not s.sample:
                continue
            assert next(rows) == a["query_start_loc"][b + 1] - 1
            p = np.arange(s.end)
            ctx = a["block_tables"][b, p // self.bs].astype(np.int64) * self.bs + p % self.bs
            assert (self.pos[ctx] == p).all(), "context read back at the wrong positions"
            got = self.tok[ctx]
            assert got.tolist() == s.request.all_token_ids, "K/V of the context was corrupted"
            sampled[s.request.request_id] = next_token(got)
        return sampled


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_fake_model_preemption_recompute_matches_solo_runs(prefix_caching):
    rng = np.random.default_rng(1234 + prefix_caching)
    bs, num_blocks = 4, 24                          # 23 usable blocks = 92 tokens
    pool = BlockPool(num_blocks, bs, enable_prefix_caching=prefix_caching)
    s = Scheduler(pool, max_num_seqs=6, max_num_batched_tokens=24, max_model_len=80,
                  long_prefill_chunk=16, eos_token_ids=[EOS])
    model = FakeModel(num_blocks, bs)
    system = rng.integers(1, VOCAB, 9).tolist()
    todo = []
    for i in range(24):
        prompt = rng.integers(1, VOCAB, int(rng.integers(1, 40))).tolist()
        if i % 3 == 0:
            prompt = system + prompt               # shared prefixes for the prefix cache
        todo.append(Request(f"r{i}", prompt, params(int(rng.integers(4, 30)))))
    expect = {r.request_id: reference(r.prompt_token_ids, r.max_tokens) for r in todo}
    aborted = {"r5", "r17"}
    done: dict[str, Request] = {}
    seen: dict[str, list[int]] = {}
    steps = 0
    while todo or s.has_unfinished():
        for _ in range(int(rng.integers(0, 3)) if s.has_unfinished() else 1):
            if todo:
                s.add(todo.pop(0))
        out = s.schedule()
        assert out.num_tokens <= 24 and out.num_seqs <= 6
        for rid in aborted:                   # mid-step (deferred to update) once it has output
            r = s.requests.get(rid)
            if r is not None and r.num_output_tokens >= 2:
                s.abort(rid)
        sampled = model.forward(out)
        for r in s.update(out, sampled):
            done[r.request_id] = r
        for r in list(s.requests.values()) + list(done.values()):
            prev = seen.get(r.request_id, [])      # output only ever grows, even when preempted
            assert r.output_token_ids[:len(prev)] == prev, r.request_id
            seen[r.request_id] = list(r.output_token_ids)
        check_pool(s)
        steps += 1
        assert steps < 2000
    assert len(done) == 24
    for rid, r in done.items():
        if rid in aborted and r.finish_reason == "abort":
            assert r.output_token_ids == expect[rid][:len(r.output_token_ids)]
            continue
        assert r.output_token_ids == expect[rid], rid
        want = "stop" if expect[rid][-1] == EOS else "length"
        assert r.finish_reason == want
    assert s.num_preemptions > 0
    assert any(done[rid].finish_reason == "abort" for rid in aborted)
    assert sum(r.num_preemptions for r in done.values()) == s.num_preemptions
    if prefix_caching:
        assert s.num_cached_tokens > 0
    assert pool.num_free == pool.num_usable
    assert all(c == 0 for c in pool.ref_counts[1:])
