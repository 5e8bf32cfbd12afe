"""Prefill graphs (runtime/graphs.py PrefillGraphs) on the CPU: the padded sizes, and the
padding itself (`pad_batch_arrays`) run through the NumPy backend's forward, which must give the
real rows exactly the logits of the unpadded step and write K/V nowhere but the real slots and
the null block. `PaddedEager` stands in for the graphs (same sizing, eager forward on padded
inputs), so the engine path (chunked prefill, mixed steps, prefix hits) is checked end to end.
The CUDA capture itself is checked in tests/models/test_gpu_cpu_parity.py (GPU-marked).
"""
from __future__ import annotations

import numpy as np
import pytest

from forge import LLM, SamplingParams
from forge.runtime.backend import ForwardBatch
from forge.runtime.batch import pad_batch_arrays
from forge.runtime.graphs import (aligned_spans, prefill_block_cols, prefill_seq_ladder,
                                  prefill_size, prefill_token_ladder)
from forge.testing.synthetic import write_synthetic


def test_token_ladder():
    for top in (16, 100, 512, 513, 2048, 8192, 12345):
        r = prefill_token_ladder(top)
        assert r == sorted(set(r)) and r[-1] == top and r[0] >= 1
        for a, b in zip(r, r[1:]):
            if a >= 128:  # four rungs per doubling: a step pads by < 1/4 of its size
                assert (b - a) <= a // 4 + 1, (a, b)
    assert prefill_token_ladder(512)[:9] == [16, 32, 64, 128, 160, 192, 224, 256, 320]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aligned_spans(seed):
    """Each section of a graph's input buffer starts 16-byte aligned (4 int32 words: Triton
    compiles a kernel again for a pointer that is not), in order, without overlap."""
    rng = np.random.default_rng(seed)
    words = {f"s{i}": int(n) for i, n in enumerate(rng.integers(0, 23, size=7))}
    spans, total = aligned_spans(words)
    assert list(spans) == list(words)
    end = 0
    for name, (a, b) in spans.items():
        assert a % 4 == 0 and a >= end and b - a == words[name], (name, a, b)
        assert a - end < 4   # no more padding than alignment needs
        end = b
    assert total == end
    assert aligned_spans({"a": 1, "b": 1, "c": 2}) == ({"a": (0, 1), "b": (4, 5), "c": (8, 10)}, 10)
    assert aligned_spans({"a": 3, "b": 2}, align=2) == ({"a": (0, 3), "b": (4, 6)}, 6)


def test_seq_ladder():
    assert prefill_seq_ladder(1) == [1]
    assert prefill_seq_ladder(9) == [1, 2, 4, 8, 9]
    assert prefill_seq_ladder(8) == [1, 2, 4, 8]


def _host(T, B, mql=2, W=3):
    return {"num_tokens": T, "num_seqs": B, "max_query_len": mql,
            "block_tables": np.zeros((B, W), np.int32)}


def test_prefill_size():
    t, b = prefill_token_ladder(512), prefill_seq_ladder(9)
    assert prefill_size(_host(512, 1), t, b, 8) == (512, 1)      # exact: no padding sequence
    assert prefill_size(_host(500, 1), t, b, 8) == (512, 2)      # padded: one more sequence
    assert prefill_size(_host(7, 3), t, b, 8) == (16, 4)
    assert prefill_size(_host(129, 8), t, b, 8) == (160, 9)
    assert prefill_size(_host(129, 9), t, b, 8) is None          # no room for the padding seq
    assert prefill_size(_host(8, 8, mql=1), t, b, 8) is None     # decode: the decode graphs
    assert prefill_size(_host(513, 1), t, b, 8) is None          # more tokens than the ladder
    assert prefill_size(_host(64, 1, W=9), t, b, 8) is None      # wider block table


def test_block_cols_cover_the_padding_sequence():
    # the padding sequence of a step padded to 8192 tokens has up to 8191 tokens of context,
    # all read through its block-table row: the table is that wide even for short models
    assert prefill_block_cols(256, 16, 8192) == 512
    assert prefill_block_cols(131072, 16, 8192) == 8192
    assert prefill_block_cols(100, 16, 16) == 7


def test_pad_rejects_too_small():
    h = {"num_tokens": 5, "num_seqs": 1, "logits_indices": np.array([4]),
         "block_tables": np.zeros((1, 2), np.int32)}
    with pytest.raises(ValueError, match="cannot pad"):
        pad_batch_arrays(h, 8, 1, 2)   # padding tokens need a sequence of their own
    with pytest.raises(ValueError, match="cannot pad"):
        pad_batch_arrays(h, 4, 2, 2)


class PaddedEager:
    """PrefillGraphs' sizing and padding with an eager forward (the CPU has no graphs)."""

    def __init__(self, engine, max_tokens=None, max_seqs=8):
        self.engine = engine
        self.t_rungs = prefill_token_ladder(max_tokens or engine.max_num_batched_tokens)
        self.b_rungs = prefill_seq_ladder(max_seqs + 1)
        self.W = prefill_block_cols(engine.max_model_len, engine.block_size, self.t_rungs[-1])
        self.sizes = []

    def run(self, host):
        key = prefill_size(host, self.t_rungs, self.b_rungs, self.W)
        if key is None:
            return None
        self.sizes.append((host["num_tokens"], host["num_seqs"], key))
        eng = self.engine
        p = pad_batch_arrays(host, key[0], key[1], self.W)
        dev = {k: eng.backend.asarray(v) if isinstance(v, np.ndarray) else v for k, v in p.items()}
        logits = eng.model.forward(ForwardBatch(**dev, host=p), eng.kv.layers)
        return logits[: len(host["logits_indices"])]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny-llama-q8.gguf"
    write_synthetic(path, "tiny-llama", "Q8_0", seed=3)
    return path


PROMPTS = ["hello world", "a", "the quick brown fox jumps over the lazy dog " * 4,
           "1 2 3 4 5 6 7 8 9", "x y", "once upon a time " * 9]


@pytest.mark.parametrize("budget", [None, 24], ids=["whole", "chunked"])
def test_padded_steps_match_plain(tiny, budget):
    """Greedy tokens and logprobs of 6 concurrent requests (different lengths; with a 24-token
    budget, long prompts are chunked and share steps with decodes) equal the plain engine's."""
    kw = dict(kv_cache_tokens=4096, max_num_seqs=8)
    if budget:
        kw["max_num_batched_tokens"] = budget
    plain = LLM(tiny, device="cpu", **kw)
    padded = LLM(tiny, device="cpu", **kw)
    padded.engine.prefill_graphs = pg = PaddedEager(padded.engine)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=True)
    a = plain.generate(PROMPTS, params)
    b = padded.generate(PROMPTS, params)
    for x, y in zip(a, b):
        assert x.token_ids == y.token_ids
        np.testing.assert_allclose(x.logprobs, y.logprobs, rtol=1e-5, atol=1e-5)
    assert any(key[0] > T for T, _, key in pg.sizes), "no step was padded"
    if budget:
        assert any(B > 1 for _, B, _ in pg.sizes), "no mixed step"


def test_padding_writes_only_null_block(tiny):
    """A padded prefill step changes K/V only at the real tokens' slots and in block 0."""
    llm = LLM(tiny, device="cpu", kv_cache_tokens=4096, max_num_seqs=8)
    eng = llm.engine
    # a cache full of recognisable values
    rng = np.random.default_rng(0)
    for k, v in eng.kv.layers:
        k[...] = rng.standard_normal(k.shape).astype(k.dtype)
        v[...] = rng.standard_normal(v.shape).astype(v.dtype)
    before = [(k.copy(), v.copy()) for k, v in eng.kv.layers]
    pg = PaddedEager(eng)
    eng.prefill_graphs = pg
    eng.add_request(list(range(5, 5 + 37)), SamplingParams(temperature=0, max_tokens=1))
    eng.step()
    (T, B, key), = pg.sizes
    assert key[0] > T
    bs = eng.block_size
    for (k0, v0), (k1, v1) in zip(before, eng.kv.layers):
        changed = np.argwhere(np.any(k0 != k1, axis=(2, 3)) | np.any(v0 != v1, axis=(2, 3)))
        slots = {int(b) * bs + int(o) for b, o in changed}
        real = [s for s in slots if s >= bs]
        assert len(real) == T and all(s < bs for s in slots - set(real))


def test_padding_longer_than_the_context_limit(tiny):
    """Many short prompts in one step padded past max_model_len (a 64-token padding sequence
    in a model limited to 40): the block tables are wide enough for it, results unchanged."""
    kw = dict(kv_cache_tokens=4096, max_num_seqs=8, max_model_len=40, max_num_batched_tokens=128)
    plain = LLM(tiny, device="cpu", **kw)
    padded = LLM(tiny, device="cpu", **kw)
    padded.engine.prefill_graphs = pg = PaddedEager(padded.engine)
    prompts = [list(range(3 + i, 12 + i)) for i in range(8)]    # 8 x 9 tokens: 72 -> 128
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    a = plain.generate(prompts, params)
    b = padded.generate(prompts, params)
    assert [x.token_ids for x in a] == [y.token_ids for y in b]
    T, B, key = pg.sizes[0]
    assert key[0] - T > 40, pg.sizes
