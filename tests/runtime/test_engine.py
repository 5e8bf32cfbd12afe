"""The engine and the public API on tiny synthetic models (CPU): batching, streaming, stops,
preemption, abort, errors."""
from __future__ import annotations

import pytest

from forge import LLM, SamplingParams
from forge.errors import ForgeError, RequestError
from forge.testing.synthetic import write_synthetic


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny-llama-q8.gguf"
    write_synthetic(path, "tiny-llama", "Q8_0", seed=3)
    return path


@pytest.fixture(scope="module")
def llm(tiny):
    return LLM(tiny, device="cpu", kv_cache_tokens=4096)


GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def test_batched_equals_alone(llm):
    prompts = ["hello world", "a", "the quick brown fox jumps over", "1 2 3 4 5 6 7 8 9"]
    together = llm.generate(prompts, GREEDY)
    alone = [llm.generate([p], GREEDY)[0] for p in prompts]
    for t, a in zip(together, alone):
        assert t.token_ids == a.token_ids
        assert t.text == a.text
        assert t.finish_reason == "length" and len(t.token_ids) == 12


def test_stream_equals_generate(llm):
    full = llm.generate(["stream me"], GREEDY)[0]
    pieces = list(llm.stream("stream me", GREEDY))
    assert "".join(pieces) == full.text


def test_token_id_prompts_and_logprobs(llm):
    ids = llm.tokenizer.encode("abc def")
    out = llm.generate([ids], SamplingParams(temperature=0, max_tokens=5, logprobs=True,
                                             ignore_eos=True))[0]
    assert out.prompt_token_ids == ids
    assert len(out.logprobs) == 5 and all(lp <= 0 for lp in out.logprobs)


def test_seeded_sampling_is_reproducible(llm):
    p = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=10, seed=1234, ignore_eos=True)
    a = llm.generate(["seeded"], p)[0].token_ids
    b = llm.generate(["seeded"], p)[0].token_ids
    assert a == b


def test_stop_string_truncates(llm):
    full = llm.generate(["stop test"], GREEDY)[0]
    if len(full.text) < 4:
        pytest.skip("continuation too short to pick a stop string")
    stop = full.text[2:4]
    out = llm.generate(["stop test"], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True,
                                                     stop=[stop]))[0]
    assert out.finish_reason == "stop"
    assert stop not in out.text
    assert full.text.startswith(out.text)
    streamed = "".join(llm.stream("stop test", SamplingParams(temperature=0, max_tokens=12,
                                                              ignore_eos=True, stop=[stop])))
    assert streamed == out.text


def test_stop_token_ids(llm):
    full = llm.generate(["stop ids"], GREEDY)[0]
    tok = full.token_ids[3]
    out = llm.generate(["stop ids"], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True,
                                                    stop_token_ids=[tok]))[0]
    assert out.finish_reason == "stop"
    assert out.token_ids == full.token_ids[: full.token_ids.index(tok) + 1]


def test_preemption_keeps_outputs(tiny):
    """A cache too small for all requests at once: requests are preempted and recomputed, and
    every output still equals the output of a roomy run."""
    prompts = [("x " * (5 + 7 * i)).strip() for i in range(8)]
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    roomy = LLM(tiny, device="cpu", kv_cache_tokens=8192).generate(prompts, params)
    small = LLM(tiny, device="cpu", kv_cache_tokens=160, block_size=8, enable_prefix_caching=False)
    tight = small.generate(prompts, params)
    assert small.engine.scheduler.num_preemptions > 0
    assert [o.token_ids for o in tight] == [o.token_ids for o in roomy]
    assert small.engine.pool.num_free == small.engine.pool.num_usable


def test_prefix_cache_hits_give_same_output(tiny):
    llm = LLM(tiny, device="cpu", kv_cache_tokens=2048, block_size=4)
    prompt = "shared prefix " * 6
    a = llm.generate([prompt + "one"], GREEDY)[0]
    b = llm.generate([prompt + "one"], GREEDY)[0]
    assert llm.engine.scheduler.num_cached_tokens > 0
    assert a.token_ids == b.token_ids


def test_abort_frees_blocks(llm):
    eng = llm.engine
    rid = eng.add_request("abort me", SamplingParams(max_tokens=50, ignore_eos=True))
    eng.step()
    eng.abort(rid)
    assert not eng.has_unfinished()
    assert eng.pool.num_free == eng.pool.num_usable


def test_prompt_longer_than_context(tiny):
    llm = LLM(tiny, device="cpu", max_model_len=32)
    with pytest.raises(RequestError, match="context"):
        llm.generate(["word " * 100], SamplingParams(max_tokens=4))


def test_bad_token_ids(llm):
    with pytest.raises(RequestError, match="vocabulary"):
        llm.generate([[10 ** 9]], GREEDY)


def test_bad_params_name_field():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="seed"):
        SamplingParams(seed="x")
    with pytest.raises(ValueError, match="stop"):
        SamplingParams(stop=[""])


def test_unknown_model_name():
    with pytest.raises(ForgeError, match="neither a file nor a known model"):
        LLM("no-such-model-xyz", device="cpu")


def test_chat_renders_template(llm):
    out = llm.chat([{"role": "user", "content": "hi"}], SamplingParams(temperature=0, max_tokens=4,
                                                                      ignore_eos=True))
    assert len(out.token_ids) == 4
    ids = llm.tokenizer.encode_chat([{"role": "user", "content": "hi"}])
    assert ids[:2].count(llm.tokenizer.bos_id) <= 1


def test_failed_forward_loses_nothing(tiny, monkeypatch):
    """A forward that raises (e.g. out of memory) rolls the step back: the requests are
    recomputed on the next steps and finish with the outputs of an undisturbed run."""
    llm = LLM(tiny, device="cpu", kv_cache_tokens=2048, block_size=4)
    prompts = ["one two three four five six", "seven eight"]
    want = [o.token_ids for o in llm.generate(prompts, GREEDY)]
    eng = llm.engine
    rids = [eng.add_request(p, GREEDY) for p in prompts]
    for _ in range(3):
        eng.step()
    real = eng.model.forward
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise MemoryError("simulated out of memory")
        return real(*a, **k)

    monkeypatch.setattr(eng.model, "forward", flaky)
    with pytest.raises(MemoryError):
        eng.step()
    done = {}
    while len(done) < 2:
        for out in eng.step():
            if out.finished:
                done[out.request_id] = out
    assert [done[r].token_ids for r in rids] == want
    assert eng.pool.num_free == eng.pool.num_usable


def test_warmup_fits_a_small_kv_cache(tiny):
    """The load-time warm-up (GPU only; called here directly) runs prompts of up to 512
    tokens, but never more than the KV cache holds (a 200-token cache with a 512-token batch
    budget failed to load: `forge bench -p 16`)."""
    from forge.runtime.engine import Engine

    eng = Engine(tiny, device="cpu", kv_cache_tokens=200, max_num_batched_tokens=512)
    assert eng.pool.capacity_tokens < 512
    eng._warmup(progress=False)
    assert eng.pool.num_free == eng.pool.num_usable   # every warm-up block given back


@pytest.mark.parametrize("budget,want", [(1500, [1, 7, 64, 512, 1024, 1500]),
                                         (1024, [1, 7, 64, 512, 1024]),
                                         (300, [1, 7, 64, 300]),
                                         (4096, [1, 7, 64, 512, 1024, 2047])])  # context 2048
def test_warmup_steps_double_up_to_the_largest_step(tiny, budget, want):
    """The warm-up runs every doubling from 512 tokens up to the largest step the engine will
    schedule (attention's bucket counts tokens in powers of two, so each may want its own
    kernel variants), asking for the last row's logits only (an 8192-token step's logits of a
    262k vocabulary would take 8.6 GB)."""
    from forge.runtime.engine import Engine

    eng = Engine(tiny, device="cpu", kv_cache_tokens=4096, max_num_batched_tokens=budget)
    seen = []
    forward = eng.model.forward

    def record(batch, kv, all_logits=False, trace=None):
        out = forward(batch, kv, all_logits=all_logits, trace=trace)
        seen.append((int(batch.max_query_len), all_logits, out.shape[0]))
        return out

    eng.model.forward = record
    eng._warmup(progress=False)
    assert [s for s, _, _ in seen] == want
    assert all(not a and rows == 1 for _, a, rows in seen)
    assert eng.pool.num_free == eng.pool.num_usable


def test_warmup_with_graphs_captures_what_prompts_replay(tiny, monkeypatch):
    """With decode and prefill graphs (GPU; stubbed here), the eager warm-up stops at 512 tokens
    and the prefill graphs are captured for prompts one token short of each size (they pad to
    the size's rung with the padding sequence: (s, 2) graphs), plus a full-budget chunk (a
    longer prompt's chunks: (top, 1))."""
    from forge.runtime import graphs as graphs_mod
    from forge.runtime.engine import Engine

    eng = Engine(tiny, device="cpu", kv_cache_tokens=4096, max_num_batched_tokens=1500)
    calls = {}

    class FakeDecode:
        def __init__(self, engine):
            self.pool = None

        def capture(self, progress):
            calls["decode"] = True

    class FakePrefill:
        def __init__(self, engine):
            pass

        def warm(self, sizes, progress=False):
            calls["prefill"] = sizes

    monkeypatch.setattr(graphs_mod, "DecodeGraphs", FakeDecode)
    monkeypatch.setattr(graphs_mod, "PrefillGraphs", FakePrefill)
    monkeypatch.setattr(eng.backend, "cuda_graphs", True, raising=False)
    monkeypatch.setattr(eng.backend, "prefill_graphs", True, raising=False)
    seen = []
    forward = eng.model.forward

    def record(batch, kv, all_logits=False, trace=None):
        seen.append(int(batch.max_query_len))
        return forward(batch, kv, all_logits=all_logits, trace=trace)

    eng.model.forward = record
    eng._warmup(progress=False)
    assert seen == [1, 7, 64, 512]
    assert calls["decode"]
    assert calls["prefill"] == [(6, 1), (63, 1), (511, 1), (1023, 1), (1499, 1), (1500, 1)]


def _stub_graphs(monkeypatch, eng, log):
    from forge.runtime import graphs as graphs_mod

    class FakeDecode:
        def __init__(self, engine):
            self.pool = None

        def dry_run(self):
            log.append("decode dry")

        def capture(self, progress):
            log.append("decode capture")

    class FakePrefill:
        def __init__(self, engine):
            pass

        def dry_run(self, sizes):
            log.append(("prefill dry", tuple(sizes)))

        def warm(self, sizes, progress=False):
            log.append(("prefill warm", tuple(sizes)))

    monkeypatch.setattr(graphs_mod, "DecodeGraphs", FakeDecode)
    monkeypatch.setattr(graphs_mod, "PrefillGraphs", FakePrefill)
    monkeypatch.setattr(eng.backend, "cuda_graphs", True, raising=False)
    monkeypatch.setattr(eng.backend, "prefill_graphs", True, raising=False)
    forward = eng.model.forward

    def record(batch, kv, all_logits=False, trace=None):
        log.append(int(batch.max_query_len))
        return forward(batch, kv, all_logits=all_logits, trace=trace)

    eng.model.forward = record


def test_warmup_compiles_ahead_then_runs(tiny, monkeypatch):
    """Where the backend can compile ahead, the warm-up first runs every step it will run (eager
    sizes, each graph's step) inside the backend's compile_ahead context, then warms for real."""
    import contextlib

    from forge.kernels.precompile import Job
    from forge.runtime.engine import Engine

    eng = Engine(tiny, device="cpu", kv_cache_tokens=4096, max_num_batched_tokens=1500)
    log = []
    _stub_graphs(monkeypatch, eng, log)

    @contextlib.contextmanager
    def ahead():
        log.append("enter")
        job = Job(3)
        yield job
        job.submitted = 5
        log.append("exit")

    monkeypatch.setattr(eng.backend, "compile_ahead", lambda progress=False: ahead(), raising=False)
    eng._warmup(progress=False)
    sizes = ((6, 1), (63, 1), (511, 1), (1023, 1), (1499, 1), (1500, 1))
    assert log == ["enter", 1, 7, 64, 512, "decode dry", ("prefill dry", sizes), "exit",
                   1, 7, 64, 512, "decode capture", ("prefill warm", sizes)]
    assert eng.compile_ahead["threads"] == 3 and eng.compile_ahead["kernels"] == 5
    assert eng.pool.num_free == eng.pool.num_usable


def test_warmup_marks_a_complete_warmup_and_skips_compiling_ahead_after(tiny, monkeypatch,
                                                                        tmp_path):
    """A warm-up that completes leaves the backend's mark for its parts; the next warm-up of the
    same parts finds it and runs no dry pass. Other sizes are other parts."""
    import contextlib

    from forge.kernels.precompile import Job
    from forge.runtime.engine import Engine

    eng = Engine(tiny, device="cpu", kv_cache_tokens=4096, max_num_batched_tokens=600)
    log, marks = [], {}
    _stub_graphs(monkeypatch, eng, log)

    @contextlib.contextmanager
    def ahead():
        log.append("enter")
        yield Job(2)

    def warm_mark(parts):
        return marks.setdefault(repr(parts), tmp_path / f"mark{len(marks)}.json")

    monkeypatch.setattr(eng.backend, "compile_ahead", lambda progress=False: ahead(), raising=False)
    monkeypatch.setattr(eng.backend, "warm_mark", warm_mark, raising=False)
    eng._warmup(progress=False)
    assert log.count("enter") == 1 and (tmp_path / "mark0.json").exists()
    log.clear()
    eng._warmup(progress=False)
    assert "enter" not in log and log[:4] == [1, 7, 64, 512]
    assert "skipped" in eng.compile_ahead
    # another largest step: other parts, no mark yet
    eng.max_num_batched_tokens = 700
    log.clear()
    eng._warmup(progress=False)
    assert log.count("enter") == 1 and len(marks) == 2
    # a different weight layout is a different key too
    p1 = eng._warm_parts([1], [(6, 1)])
    eng.model.plan.layers[0].wo.layout = "other"
    assert eng._warm_parts([1], [(6, 1)]) != p1


def test_warmup_goes_on_when_compiling_ahead_fails(tiny, monkeypatch, capsys):
    from forge.runtime.engine import Engine

    eng = Engine(tiny, device="cpu", kv_cache_tokens=4096, max_num_batched_tokens=600)
    log = []
    _stub_graphs(monkeypatch, eng, log)

    class Broken:
        def __enter__(self):
            raise RuntimeError("no compiler")

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(eng.backend, "compile_ahead", lambda progress=False: Broken(), raising=False)
    eng._warmup(progress=False)
    assert "compiling ahead stopped (RuntimeError: no compiler)" in capsys.readouterr().err
    assert eng.compile_ahead is None
    assert log[:4] == [1, 7, 64, 512] and "decode capture" in log
    # and a backend with nothing to compile ahead (answers None) just warms
    log.clear()
    monkeypatch.setattr(eng.backend, "compile_ahead", lambda progress=False: None, raising=False)
    eng._warmup(progress=False)
    assert log[:4] == [1, 7, 64, 512] and "decode dry" not in log


_FIRST_BLAS_IN_CAPTURE = r"""
import torch
from forge.runtime import graphs
dev = torch.device("cuda")
a = torch.ones(64, 64, dtype=torch.bfloat16, device=dev)
# warm runs that call no cuBLAS, then a capture whose matmul is this process's first cuBLAS call
g, out = graphs._capture_graph(torch, dev, None, lambda: a @ a, warm=lambda: a + 1, warm_runs=1)
g.replay()
torch.cuda.synchronize()
print("OK", float(out[0, 0]))
"""


@pytest.mark.gpu
def test_gpu_capture_when_the_first_cublas_call_is_in_it():
    """A capture that makes the process's first cuBLAS call must work: quantized linears of
    T >= DEQUANT_T call dequantize + cuBLAS only inside a capture (kernels/matmul.py), and
    nothing eager may have called cuBLAS before. Llama-3.2-1B Q4_K_M failed to load on an H100
    that way (CUBLAS_STATUS_NOT_INITIALIZED in the first prefill graph; run 26). graphs._init_blas
    sets cuBLAS up before any capture. A fresh process: pytest's may have called cuBLAS."""
    import os
    import subprocess
    import sys

    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _FIRST_BLAS_IN_CAPTURE], env=env, cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "OK 64.0" in proc.stdout, proc.stderr[-3000:]
