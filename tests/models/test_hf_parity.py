"""Parity with transformers on synthetic models (tests/fixtures/hf_<shape>_<quant>.npz).

Each fixture holds transformers' float32 logits for a fixed 12-token sequence on a synthetic GGUF
(forge.testing.synthetic, seed 0), written by tools/make_hf_fixtures.py. Here we

1. rewrite the same GGUF and check its sha256 against the fixture (the writer is deterministic and
   the weights are the ones transformers saw);
2. check a plain float64 NumPy implementation of the architecture (below, written from the
   transformers/llama.cpp semantics, reading the GGUF directly) against the fixture: this validates
   the fixture and our reading of each architecture independently of forge;
3. run forge on the CPU (`LLM(path, device="cpu").engine.model_logits(ids)`) and compare.

Tolerance: max |forge - ref| / max |ref| < 1e-3 for F32 weights; 1e-2 for F16 and quantized weights
(identical dequantized weights, but the runtime may keep activations in lower precision there).
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FIXTURE_FILES = sorted(FIXTURES.glob("hf_*.npz"))
IDS = [p.stem[3:] for p in FIXTURE_FILES]


def _load_fixture(path: Path) -> dict:
    with np.load(path) as z:
        d = {k: z[k] for k in z.files}
    for k in ("shape", "quant", "gguf_sha256", "hf_config_overrides"):
        d[k] = str(d[k])
    d["seed"] = int(d["seed"])
    return d


@pytest.fixture(scope="module")
def synthetic_files(tmp_path_factory):
    """fixture path -> (fixture dict, GGUF path), GGUFs written once per module."""
    from forge.testing.synthetic import write_synthetic

    out = {}
    root = tmp_path_factory.mktemp("hf_parity")

    def get(path: Path):
        if path not in out:
            fx = _load_fixture(path)
            gguf_path = write_synthetic(root / f"{fx['shape']}-{fx['quant']}.gguf", fx["shape"], fx["quant"],
                                        seed=fx["seed"], progress=False)
            out[path] = (fx, gguf_path)
        return out[path]

    return get


def _tolerance(quant: str) -> float:
    return 1e-3 if quant == "F32" else 1e-2


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max() / np.abs(ref).max())


# ---------------------------------------------------------------------------------------------
# float64 NumPy reference
# ---------------------------------------------------------------------------------------------

def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(x: np.ndarray, pos: np.ndarray, base: float, style: str, freq_div: np.ndarray | None) -> np.ndarray:
    """x [T, heads, d]. "norm" rotates adjacent pairs (x[2i], x[2i+1]); "neox" rotates
    (x[i], x[i + d/2]). Frequency i is base^(-2i/d), divided by freq_div[i] (llama3 rope_freqs)."""
    d = x.shape[-1]
    inv = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    if freq_div is not None:
        inv = inv / freq_div.astype(np.float64)
    ang = pos[:, None].astype(np.float64) * inv[None, :]          # [T, d/2]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    out = np.empty_like(x)
    if style == "norm":
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
    else:
        a, b = x[..., : d // 2], x[..., d // 2:]
        out[..., : d // 2] = a * cos - b * sin
        out[..., d // 2:] = a * sin + b * cos
    return out


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def reference_logits(path: Path, token_ids: list[int]) -> np.ndarray:
    """Full-prompt logits [T, vocab] of a llama / qwen2 / qwen3 / gemma3 GGUF, in float64."""
    import gguf

    r = gguf.GGUFReader(str(path))

    def meta(key, default=None):
        f = r.fields.get(key)
        return default if f is None else f.contents()

    W = {t.name: np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float64).reshape(
        tuple(int(x) for x in reversed(t.shape))) for t in r.tensors}
    arch = meta("general.architecture")
    hidden = int(meta(f"{arch}.embedding_length"))
    L = int(meta(f"{arch}.block_count"))
    H = int(meta(f"{arch}.attention.head_count"))
    KV = int(meta(f"{arch}.attention.head_count_kv"))
    hd = int(meta(f"{arch}.attention.key_length", hidden // H))
    eps = float(meta(f"{arch}.attention.layer_norm_rms_epsilon"))
    base = float(meta(f"{arch}.rope.freq_base", 10000.0))
    window = meta(f"{arch}.attention.sliding_window")
    style = "norm" if arch == "llama" else "neox"
    freq_div = W.get("rope_freqs.weight")
    gemma = arch == "gemma3"

    ids = np.asarray(token_ids)
    T = len(ids)
    pos = np.arange(T)
    x = W["token_embd.weight"][ids]
    if gemma:
        x = x * math.sqrt(hidden)
    for i in range(L):
        p = f"blk.{i}."
        sliding = gemma and window is not None and (i + 1) % 6 != 0
        layer_base = 10000.0 if sliding else base
        h = _rms_norm(x, W[p + "attn_norm.weight"], eps)
        q = h @ W[p + "attn_q.weight"].T
        k = h @ W[p + "attn_k.weight"].T
        v = h @ W[p + "attn_v.weight"].T
        if p + "attn_q.bias" in W:
            q, k, v = q + W[p + "attn_q.bias"], k + W[p + "attn_k.bias"], v + W[p + "attn_v.bias"]
        q, k, v = q.reshape(T, H, hd), k.reshape(T, KV, hd), v.reshape(T, KV, hd)
        if p + "attn_q_norm.weight" in W:
            q = _rms_norm(q, W[p + "attn_q_norm.weight"], eps)
            k = _rms_norm(k, W[p + "attn_k_norm.weight"], eps)
        q = _rope(q, pos, layer_base, style, freq_div)
        k = _rope(k, pos, layer_base, style, freq_div)
        group = H // KV
        attn = np.empty((T, H, hd))
        mask = pos[None, :] <= pos[:, None]                          # [query, key]
        if sliding:
            mask &= (pos[:, None] - pos[None, :]) < int(window)
        for hh in range(H):
            s = (q[:, hh, :] @ k[:, hh // group, :].T) / math.sqrt(hd)
            s = np.where(mask, s, -np.inf)
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            attn[:, hh, :] = s @ v[:, hh // group, :]
        o = attn.reshape(T, H * hd) @ W[p + "attn_output.weight"].T
        if gemma:
            o = _rms_norm(o, W[p + "post_attention_norm.weight"], eps)
        x = x + o
        h = _rms_norm(x, W[p + "ffn_norm.weight"], eps)
        g = h @ W[p + "ffn_gate.weight"].T
        u = h @ W[p + "ffn_up.weight"].T
        a = _gelu_tanh(g) if gemma else _silu(g)
        f = (a * u) @ W[p + "ffn_down.weight"].T
        if gemma:
            f = _rms_norm(f, W[p + "post_ffw_norm.weight"], eps)
        x = x + f
    x = _rms_norm(x, W["output_norm.weight"], eps)
    out_w = W.get("output.weight", W["token_embd.weight"])
    return x @ out_w.T


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------

def test_fixtures_present():
    names = {p.name for p in FIXTURE_FILES}
    for shape in ("tiny-llama", "tiny-qwen2", "tiny-qwen3"):
        assert f"hf_{shape}_F32.npz" in names, f"missing fixture for {shape} (run tools/make_hf_fixtures.py)"


@pytest.mark.parametrize("fixture", FIXTURE_FILES, ids=IDS)
def test_synthetic_gguf_is_reproducible(fixture, synthetic_files):
    fx, path = synthetic_files(fixture)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha == fx["gguf_sha256"], (
        f"{fx['shape']} {fx['quant']} seed {fx['seed']}: the synthetic GGUF differs from the one the "
        "fixture was made from (writer or numpy/gguf changed?); regenerate with tools/make_hf_fixtures.py")


@pytest.mark.parametrize("fixture", FIXTURE_FILES, ids=IDS)
def test_numpy_reference_matches_transformers(fixture, synthetic_files):
    fx, path = synthetic_files(fixture)
    ref = fx["logits"]
    ours = reference_logits(path, fx["token_ids"].tolist())
    assert ours.shape == ref.shape
    err = _rel_err(ours, ref)
    assert err < 1e-4, f"float64 reference vs transformers: rel err {err:.2e}"
    # The comparison has teeth: the logits vary across positions and vocabulary.
    assert ref.std() > 0.3 and np.abs(np.diff(ref, axis=0)).max() > 0.1


@pytest.mark.parametrize("fixture", FIXTURE_FILES, ids=IDS)
def test_forge_matches_transformers(fixture, synthetic_files):
    from forge.llm import LLM

    fx, path = synthetic_files(fixture)
    overrides = json.loads(fx["hf_config_overrides"])
    llm = LLM(path, device="cpu", progress=False)
    logits = np.asarray(llm.engine.model_logits(fx["token_ids"].tolist()))
    ref = fx["logits"]
    assert logits.shape == ref.shape, f"forge logits {logits.shape}, transformers {ref.shape}"
    assert np.isfinite(logits).all()
    err = _rel_err(logits, ref)
    tol = _tolerance(fx["quant"])
    assert err < tol, (f"{fx['shape']} {fx['quant']}: max |forge - transformers| / max |transformers| = "
                       f"{err:.2e} >= {tol:g} (hf config overrides {overrides})")
