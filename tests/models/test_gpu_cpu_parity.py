"""The GPU (Triton) and CPU (NumPy) backends agree on synthetic models of every supported
architecture and quant type: the same greedy tokens for 32 steps and logits within tolerance, at
batch 1 and with 8 concurrent requests of different lengths. GPU-marked.

Token equality is checked with float32 activations on the GPU (act_dtype="f32") against the
CPU's plain float32 numerics: both compute the same function, so greedy paths agree unless two
logits tie to within float32 rounding. bf16 activations (the GPU default) are checked through
the logits, with a tolerance for bf16 rounding.
"""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

ARCHS = ["tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-gemma3"]
QUANTS = ["F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K_M", "Q2_K", "Q3_K", "Q5_K", "Q6_K"]
PROMPTS = ["a", "the cat sat on the mat", "1 2 3 4 5 6 7 8 9 10 11 12", "hello world, hello",
           "x y z", "once upon a time there was", "abc", "q r s t u v w x y z a b c d e f"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from forge.testing.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("parity")
    cache = {}

    def get(arch: str, quant: str):
        key = (arch, quant)
        if key not in cache:
            cache[key] = write_synthetic(root / f"{arch}-{quant}.gguf", arch, quant, seed=11)
        return cache[key]

    return get


def _llm(path, device, **kw):
    from forge import LLM

    if device == "cpu":
        return LLM(path, device="cpu", numerics="f32", kv_cache_tokens=8192, max_num_seqs=8, **kw)
    return LLM(path, device="gpu", kv_cache_tokens=8192, max_num_seqs=8, **kw)


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_tokens_and_logits(models, arch, quant):
    from forge import SamplingParams

    path = models(arch, quant)
    cpu = _llm(path, "cpu")
    gpu32 = _llm(path, "gpu", act_dtype="f32")
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    # batch 1
    for p in PROMPTS[:2]:
        a = cpu.generate([p], params)[0].token_ids
        b = gpu32.generate([p], params)[0].token_ids
        assert a == b, f"{arch} {quant} batch 1 {p!r}: cpu {a} gpu {b}"
    # 8 concurrent requests of different lengths
    a = [o.token_ids for o in cpu.generate(PROMPTS, params)]
    b = [o.token_ids for o in gpu32.generate(PROMPTS, params)]
    assert a == b, f"{arch} {quant} batch 8 differs"

    ids = cpu.tokenizer.encode(PROMPTS[5])
    ref = cpu.engine.model_logits(ids)
    got32 = gpu32.engine.model_logits(ids)
    err32 = np.abs(got32 - ref).max() / np.abs(ref).max()
    assert err32 < 2e-3, f"{arch} {quant} f32 logits rel err {err32:.2e}"
    del gpu32
    gpu16 = _llm(path, "gpu")  # bf16 activations, the default
    got16 = gpu16.engine.model_logits(ids)
    err16 = np.abs(got16 - ref).max() / np.abs(ref).max()
    assert err16 < 6e-2, f"{arch} {quant} bf16 logits rel err {err16:.2e}"
    agree = np.mean(got16.argmax(-1) == ref.argmax(-1))
    assert agree >= 0.8, f"{arch} {quant} bf16 argmax agreement {agree:.2f}"


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gemma3"])
def test_run_ahead_matches_plain_decode(models, arch):
    """The engine's run-ahead decode (the next step launched on the device before the host has
    the tokens, graphs.DecodeGraphs.advance) gives exactly the tokens of the plain graph decode,
    with stops, seeded sampling and logprobs, at batch 1 and 8."""
    from forge import SamplingParams

    path = models(arch, "Q4_K_M")
    plain = _llm(path, "gpu", act_dtype="f32", run_ahead=False)
    ahead = _llm(path, "gpu", act_dtype="f32")
    greedy = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    ref = plain.generate(PROMPTS, greedy)
    stop_tok = ref[3].token_ids[17]
    cases = [
        greedy,
        [greedy] * 3 + [SamplingParams(temperature=0, max_tokens=40, ignore_eos=True,
                                       stop_token_ids=[stop_tok])] + [greedy] * 4,
        SamplingParams(temperature=0.8, top_p=0.9, max_tokens=33, seed=5, ignore_eos=True,
                       logprobs=True),
    ]
    for params in cases:
        for prompts in (PROMPTS[:1], PROMPTS):
            ps = params[:len(prompts)] if isinstance(params, list) else params
            a = plain.generate(prompts, ps)
            b = ahead.generate(prompts, ps)
            for x, y in zip(a, b):
                assert x.token_ids == y.token_ids, f"{arch}: run-ahead changed the tokens"
                assert x.finish_reason == y.finish_reason
                if x.logprobs is not None:
                    np.testing.assert_allclose(x.logprobs, y.logprobs, rtol=1e-5, atol=1e-5)
    # a request that arrives while a step is launched ahead: that step is discarded (a miss)
    # and the outputs are still those of the plain engine
    runs = []
    for llm in (ahead, plain):
        eng = llm.engine
        toks, steps, t_arrive = {}, 0, None
        eng.add_request(PROMPTS[2], greedy, request_id="first")
        while eng.has_unfinished():
            for o in eng.step():
                toks[o.request_id] = o.token_ids
            steps += 1
            if t_arrive is None and (eng._ahead is not None or (llm is plain and steps == runs[0][1])):
                t_arrive = steps
                eng.add_request(PROMPTS[5], greedy, request_id="second")
        runs.append((toks, t_arrive))
    assert runs[0] == runs[1], f"{arch}: run-ahead with an arrival changed the tokens"
    eng = ahead.engine
    assert eng.num_ahead_hits > 0, "no step was launched ahead"
    assert eng.num_ahead_misses > 0, "the arrival did not discard the step launched ahead"
    assert eng._ahead is None
    assert plain.engine.num_ahead_hits == 0


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gemma3"])
def test_prefill_graphs_match_eager(models, arch):
    """Prefill and mixed steps replayed from graphs (runtime/graphs.py PrefillGraphs, padded
    sizes, captured on first use) give the tokens of eager prefill: float32 activations (both
    paths dequantize + matmul in float32), 8 requests of different lengths, whole and chunked
    (a 24-token budget: long prompts split, steps mixing prefill chunks and decodes), a
    prefix-cache hit, and a graph limit reached (new sizes run eagerly past it)."""
    from forge import SamplingParams

    path = models(arch, "Q4_K_M")
    greedy = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, logprobs=True)
    prompts = PROMPTS + [PROMPTS[5] + " and then", PROMPTS[7] * 3]
    for budget in (None, 24):
        kw = dict(act_dtype="f32", **({"max_num_batched_tokens": budget} if budget else {}))
        eager = _llm(path, "gpu", prefill_graphs=False, **kw)
        graphs = _llm(path, "gpu", **kw)
        assert eager.engine.prefill_graphs is None
        pg = graphs.engine.prefill_graphs
        for ps in (prompts[:1], prompts):
            a = eager.generate(ps, greedy)
            b = graphs.generate(ps, greedy)
            for x, y in zip(a, b):
                assert x.token_ids == y.token_ids, f"{arch} budget {budget}: graphs changed tokens"
                np.testing.assert_allclose(x.logprobs, y.logprobs, rtol=2e-3, atol=2e-3)
        assert pg.num_replays > 0 and len(pg.by_size) >= 2
        # past the graph limit, new sizes run eagerly with the same results
        pg.by_size.clear()
        pg.max_graphs = 0
        odd = ["z " * 41, "w " * 29]
        a = eager.generate(odd, greedy)
        b = graphs.generate(odd, greedy)
        assert [x.token_ids for x in a] == [y.token_ids for y in b]
        assert pg.num_eager > 0
        del eager, graphs
    # bf16 (the default): the graphs' quantized linears take dequantize + cuBLAS past
    # DEQUANT_T, eager ones the fused GEMM: logprobs agree to bf16 rounding
    eager = _llm(path, "gpu", prefill_graphs=False)
    graphs = _llm(path, "gpu")
    long = [" ".join(str(i) for i in range(300))]
    sp = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, logprobs=True)
    a, b = eager.generate(long, sp)[0], graphs.generate(long, sp)[0]
    assert a.token_ids[0] == b.token_ids[0]
    assert abs(a.logprobs[0] - b.logprobs[0]) < 5e-2


@pytest.mark.parametrize("arch,quant", [("tiny-llama", "Q4_K_M"), ("tiny-gemma3", "Q8_0")])
def test_fused_x_quantization_matches_the_quantize_kernel(models, arch, quant, monkeypatch):
    """bf16 decode with every GEMV on pre-quantized x (X_PRE on for all shapes): the rms_norm /
    act_mul outputs quantized on the way out (TritonBackend.xq_chunking) give the tokens and
    logprobs of the same decode with FORGE_XQ_FUSE=0 (every GEMV's own quantize kernel), at
    batch 1 and 8, and launch fewer quantize kernels."""
    from forge import SamplingParams
    from forge.kernels import matmul as mm
    from forge.kernels import tuning

    launches = []
    kern = mm._xquant_kernel

    class Count:
        def __getitem__(self, grid):
            launches.append(grid)
            return kern[grid]

    monkeypatch.setattr(mm, "_xquant_kernel", Count())
    path = models(arch, quant)
    sp = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=True)
    outs, counts = {}, {}
    with tuning.override({"linear_gemv": {"*": {"X_INT8": 1, "X_PRE": 1}}}):
        mm.clear_config_cache()
        for fuse in ("1", "0"):
            monkeypatch.setenv("FORGE_XQ_FUSE", fuse)
            llm = _llm(path, "gpu", cuda_graphs=False)   # eager: every launch goes through Count
            assert (llm.engine.backend.xq_chunking is not None) == (fuse == "1")
            launches.clear()
            outs[fuse] = [llm.generate(ps, sp) for ps in (PROMPTS[:1], PROMPTS)]
            counts[fuse] = len(launches)
            del llm
    mm.clear_config_cache()
    for a, b in zip(outs["1"], outs["0"]):
        for x, y in zip(a, b):
            assert x.token_ids == y.token_ids, f"{arch} {quant}: fused quantization changed tokens"
            np.testing.assert_allclose(x.logprobs, y.logprobs, rtol=1e-3, atol=1e-3)
    assert counts["1"] < counts["0"] / 2, counts
