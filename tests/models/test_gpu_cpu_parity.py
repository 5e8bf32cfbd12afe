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
