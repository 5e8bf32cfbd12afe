"""forge's CPU backend follows llama.cpp token for token on real GGUF models.

Fixtures (tests/fixtures/greedy_*.json) hold llama.cpp's greedy continuations of six varied prompts
(llama-cpp-python, flash attention off, F32 KV cache; tools/make_greedy_fixtures.py), and its final
normed hidden states for two of them. forge runs with NumpyBackend(numerics="llamacpp"), the
default, which reproduces llama.cpp's CPU arithmetic (forge/cpu/llamacpp.py).

Each prompt runs alone, as llama.cpp ran it: the whole prompt in one step, then one token per
step (ggml's repacked Q4_K kernel, used by Gemma, rounds a row differently depending on its place
in the batch, so batching the prompts together would be a different computation).
"""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from tests.conftest import FIXTURES

MODELS = [("smollm2-135m", "greedy_smollm2.json"), ("gemma3-270m", "greedy_gemma3.json")]
REQUIRED = 4          # of the 6 prompts must match all 16 tokens (the project's acceptance bar)


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture(scope="module", params=MODELS, ids=[m for m, _ in MODELS])
def loaded(request, model_path):
    """(model name, LLM, fixture): one model at a time, freed before the next is loaded."""
    from forge import LLM

    model, fixture = request.param
    fx = _fixture(fixture)
    path = model_path(model)
    if path.name != fx["model"]:
        pytest.skip(f"fixture was made with {fx['model']}, the local {model} is {path.name}")
    # one BLAS thread: the exact kernels run many small matmuls, where OpenBLAS threads only
    # spin; no prefix caching: a cached prefix would change a prompt's first step
    llm = LLM(path, device="cpu", numerics="llamacpp", blas_threads=1, progress=False,
              max_model_len=256, kv_cache_tokens=256, enable_prefix_caching=False)
    yield model, llm, fx
    del llm


def _bits(s: str, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), np.float32).reshape(shape)


def test_prompts_tokenize_like_llama_cpp(loaded):
    _, llm, fx = loaded
    for case in fx["cases"]:
        assert llm.tokenizer.encode(case["prompt"]) == case["prompt_ids"], case["prompt"]


def test_greedy_matches_llama_cpp(loaded, record_property):
    from forge import SamplingParams

    model, llm, fx = loaded
    assert llm.engine.backend.numerics == "llamacpp"
    params = SamplingParams(temperature=0.0, max_tokens=fx["n"], ignore_eos=True)
    report, matched = [], 0
    for case in fx["cases"]:
        out = llm.generate([case["prompt_ids"]], params)[0].token_ids
        ref = case["greedy_ids"]
        same = out == ref
        matched += same
        first_diff = next((i for i, (a, b) in enumerate(zip(out, ref)) if a != b), None)
        report.append(f"{'ok ' if same else 'BAD'} {case['prompt']!r}"
                      + ("" if same else f": first difference at token {first_diff}: {out} vs {ref}"))
    record_property("matched", f"{matched}/{len(fx['cases'])}")
    print(f"{model}: {matched}/{len(fx['cases'])} prompts match llama.cpp's first {fx['n']} tokens")
    print("\n".join(report))
    assert matched >= REQUIRED, "\n".join(report)


def _forward(engine, ids: list[int], start: int, req, trace):
    from forge.runtime.batch import make_forward_batch
    from forge.runtime.scheduler import ScheduledSeq, SchedulerOutput

    n = len(ids) - start
    out = SchedulerOutput(seqs=[ScheduledSeq(req, start, n, True)], num_tokens=n)
    batch = make_forward_batch(out, engine.block_size, engine.backend)
    return engine.model.forward(batch, engine.kv.layers, all_logits=True, trace=trace)


@pytest.mark.parametrize("index", [0, 1])
def test_hidden_state_bit_exact(loaded, index):
    """The final normed hidden state of a prompt (one step) and of the next token (a decode step
    over the cached prompt) equal llama.cpp's bit for bit: every layer's matmuls, norms, RoPE,
    attention and activations round exactly as ggml's do. The fixture holds a short prompt and
    an 18-token one (ggml picks some kernels by batch size: the tiled K-quant matmul from 8
    rows, the repacked Q4_K's gemm for rows in groups of four). (The emulation calls the C
    library's sinf/cosf/tanhf/expf as ggml does: a libm that rounds differently from the one the
    fixture was made with could fail this test before the greedy one.)"""
    from forge.runtime.request import Request
    from forge.sampling import SamplingParams

    _, llm, fx = loaded
    ref = fx["result_norm"][index]
    engine = llm.engine
    case = fx["cases"][ref["case"]]
    ids = list(case["prompt_ids"]) + [case["greedy_ids"][0]]
    blocks = engine.pool.allocate(-(-len(ids) // engine.block_size))
    assert blocks is not None
    try:
        req = Request("__bits__", ids, SamplingParams(max_tokens=1))
        req.block_ids = list(blocks)
        seen = {}
        trace = lambda i, h: seen.__setitem__(i, np.asarray(h)) if i == engine.cfg.num_layers else None
        _forward(engine, ids[:-1], 0, req, trace)
        prompt = seen.pop(engine.cfg.num_layers)
        _forward(engine, ids, len(ids) - 1, req, trace)
        decode = seen.pop(engine.cfg.num_layers)
    finally:
        engine.pool.free(blocks)
    for what, got, want in (("prompt", prompt, _bits(ref["prompt"], ref["shape_prompt"])),
                            ("decode step", decode, _bits(ref["decode"], ref["shape_decode"]))):
        assert got.shape == want.shape
        differ = got.view(np.uint32) != want.view(np.uint32)
        assert not differ.any(), (f"{what}: {differ.sum()} of {differ.size} values differ from "
                                  f"llama.cpp's, max |diff| {np.abs(got - want).max():.3g}")
