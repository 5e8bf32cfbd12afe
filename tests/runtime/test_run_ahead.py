"""Run-ahead decode (Engine._forward_and_sample) on the CPU: the engine logic that launches step
k+1 before the host has seen step k's tokens, checked against the plain engine.

The CPU backend has no graphs; `EagerGraphs` below implements DecodeGraphs' interface (run,
greedy_ids, advance, fetch) with eager forwards, executing the launched-ahead step at once: its K/V writes
land before the host's update of step k, which is the order the GPU gives them too. The GPU
path itself (device-side advance, pinned fetch) is checked in tests/models/test_gpu_cpu_parity.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from forge import LLM, SamplingParams
from forge.runtime.backend import ForwardBatch
from forge.testing.synthetic import write_synthetic


class _Done:
    def __init__(self, ids, lps):
        self.ids, self.lps = ids, lps

    def wait(self):
        ids = np.asarray(self.ids).tolist()
        return ids, (np.asarray(self.lps).tolist() if self.lps is not None else None)


class EagerGraphs:
    def __init__(self, engine):
        self.engine = engine
        self.last = None
        self.advances = 0

    def can_run(self, host):
        return host["max_query_len"] == 1 and len(host["logits_indices"]) == host["num_seqs"]

    def _forward(self, host):
        eng = self.engine
        dev = {k: eng.backend.asarray(v) if isinstance(v, np.ndarray) else v for k, v in host.items()}
        return eng.model.forward(ForwardBatch(**dev, host=host), eng.kv.layers)

    def run(self, host):
        self.last = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in host.items()}
        self.logits = self._forward(self.last)
        return self.logits

    def greedy_ids(self, n):
        assert self.logits.shape[0] == n
        return np.argmax(self.logits, axis=-1).astype(np.int64)

    def advance(self, n, ids):
        h = self.last
        assert h["num_seqs"] == n
        h["token_ids"] = np.asarray(ids, np.int32).copy()
        for k in ("positions", "seq_lens", "slot_mapping"):
            h[k] = h[k] + 1
        h["max_seq_len"] += 1
        self.advances += 1
        self.logits = self._forward(h)
        return self.logits

    def fetch(self, ids, lps=None):
        return _Done(ids, lps)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny-llama-q8.gguf"
    write_synthetic(path, "tiny-llama", "Q8_0", seed=5)
    return path


def _pair(tiny, **kw):
    plain = LLM(tiny, device="cpu", kv_cache_tokens=4096, run_ahead=False, **kw)
    ahead = LLM(tiny, device="cpu", kv_cache_tokens=4096, **kw)
    plain.engine.graphs = EagerGraphs(plain.engine)  # the same graph path, never run ahead
    ahead.engine.graphs = EagerGraphs(ahead.engine)
    return plain, ahead


PROMPTS = ["hello world", "a", "the quick brown fox jumps over the lazy dog", "1 2 3 4 5 6 7 8 9"]


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
    SamplingParams(temperature=0, max_tokens=23, ignore_eos=True, logprobs=True),
    SamplingParams(temperature=0.9, top_p=0.9, top_k=20, max_tokens=30, seed=7, ignore_eos=True),
    SamplingParams(temperature=0.7, repetition_penalty=1.3, presence_penalty=0.5, max_tokens=25,
                   seed=11, ignore_eos=True),
], ids=["greedy", "greedy-logprobs", "seeded-topk-topp", "penalties"])
def test_run_ahead_equals_plain(tiny, params):
    plain, ahead = _pair(tiny)
    a = plain.generate(PROMPTS, params)
    b = ahead.generate(PROMPTS, params)
    for x, y in zip(a, b):
        assert x.token_ids == y.token_ids
        assert x.text == y.text and x.finish_reason == y.finish_reason
        if params.logprobs:
            np.testing.assert_allclose(x.logprobs, y.logprobs, rtol=1e-6, atol=1e-6)
    eng = ahead.engine
    assert eng.graphs.advances > 0 and eng.num_ahead_hits > 0
    assert plain.engine.graphs.advances == 0
    # every launched step was used or discarded, none left in flight after the last request
    assert eng.num_ahead_hits + eng.num_ahead_misses == eng.graphs.advances
    assert eng._ahead is None


def test_run_ahead_stops_midway(tiny):
    """A request that stops on a token (stop_token_ids) while others go on: the step launched
    ahead for it is discarded, and the others' outputs do not change."""
    plain, ahead = _pair(tiny)
    greedy = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    full = plain.generate(PROMPTS, greedy)
    tok = full[2].token_ids[9]
    params = [greedy, greedy, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True,
                                             stop_token_ids=[tok]), greedy]
    a = plain.generate(PROMPTS, params)
    b = ahead.generate(PROMPTS, params)
    assert a[2].finish_reason == "stop" and len(a[2].token_ids) <= 10
    for x, y in zip(a, b):
        assert x.token_ids == y.token_ids and x.finish_reason == y.finish_reason
    assert ahead.engine.num_ahead_misses >= 1


def test_run_ahead_with_arrivals_and_aborts(tiny):
    """Requests added and aborted between steps (the launched-ahead step no longer matches)."""
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    results = []
    for run_ahead in (False, True):
        llm = LLM(tiny, device="cpu", kv_cache_tokens=4096, run_ahead=run_ahead)
        eng = llm.engine
        eng.graphs = EagerGraphs(eng)
        toks: dict[str, list[int]] = {}
        rid = [eng.add_request(PROMPTS[0], greedy, request_id="r0"),
               eng.add_request(PROMPTS[1], greedy, request_id="r1")]
        step = 0
        while eng.has_unfinished():
            for o in eng.step():
                toks[o.request_id] = o.token_ids
            step += 1
            if step == 5:
                eng.add_request(PROMPTS[2], greedy, request_id="r2")
            if step == 9:
                eng.abort(rid[1])
            if step == 12:
                eng.add_request(PROMPTS[3], greedy, request_id="r3")
        results.append(toks)
        if run_ahead:
            assert eng.num_ahead_hits > 0 and eng.num_ahead_misses >= 2
    assert results[0] == results[1]


def test_run_ahead_block_boundaries(tiny):
    """Block size 4: a sequence crosses into a new block every 4 tokens; those steps are not
    launched ahead (the next slot is not this slot + 1), the others are."""
    plain, ahead = _pair(tiny, block_size=4)
    params = SamplingParams(temperature=0, max_tokens=21, ignore_eos=True)
    a = plain.generate(PROMPTS[:2], params)
    b = ahead.generate(PROMPTS[:2], params)
    assert [x.token_ids for x in a] == [y.token_ids for y in b]
    eng = ahead.engine
    assert 0 < eng.num_ahead_hits < 20
