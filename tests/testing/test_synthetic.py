"""forge.testing.synthetic: synthetic GGUF files load, have the planned shapes and types, valid
weights of sane scale, consistent tokenizer metadata, and are deterministic."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from forge.loader.config import ModelConfig  # noqa: E402
from forge.loader.reader import GGUFFile  # noqa: E402
from forge.testing import synthetic as syn  # noqa: E402

TINY = ("tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-gemma3")
MIX_UNDER_TEST = ("F16", "Q8_0", "Q4_0", "Q4_K_M", "Q5_K", "Q6_K", "Q2_K", "Q3_K")


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _use_more_bits(i: int, n: int) -> bool:  # llama.cpp's rule, restated
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _expected_type(mix: str, name: str, shape: syn.ModelShape, cols: int) -> str:
    """The GGML type of a matrix under `mix`, written out independently of the module."""
    if mix in ("F32", "F16", "BF16"):
        return mix
    if mix == "Q4_K_M":
        t = "Q4_K"
        layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
        if name == "output.weight" or (name == "token_embd.weight" and shape.tied_embeddings):
            t = "Q6_K"
        elif (name.endswith("attn_v.weight") or name.endswith("ffn_down.weight")) and _use_more_bits(layer, shape.num_layers):
            t = "Q6_K"
    else:
        t = mix
    block = 256 if t.endswith("_K") else 32
    if cols % block:
        t = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL"}.get(t, "F16")
        if cols % 32:
            t = "F16"
    return t


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    cache = {}

    def get(shape: str, quant: str):
        key = (shape, quant)
        if key not in cache:
            cache[key] = syn.write_synthetic(root / f"{shape}-{quant}.gguf", shape, quant, seed=7, progress=False)
        return cache[key]

    return get


# ---------------------------------------------------------------------------------------------
# Every tiny shape x mix: loads, config, tensor types, weights
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("quant", MIX_UNDER_TEST)
@pytest.mark.parametrize("shape_name", TINY)
def test_tiny_model_loads_with_expected_config_and_weights(shape_name, quant, written):
    s = syn.SHAPES[shape_name]
    path = written(shape_name, quant)
    f = GGUFFile(path)
    cfg = ModelConfig.from_gguf(f)

    hd = s.head_dim or s.hidden_size // s.num_heads
    assert cfg.arch == s.arch
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads) == (
        s.hidden_size, s.num_layers, s.num_heads, s.num_kv_heads)
    assert (cfg.head_dim, cfg.v_head_dim, cfg.rope_dim) == (hd, hd, hd)
    assert cfg.intermediate_size == s.intermediate_size
    assert cfg.vocab_size == s.vocab_size
    assert cfg.context_length == s.context_length
    assert cfg.rope_base == pytest.approx(s.rope_base)
    assert cfg.rms_eps == pytest.approx(s.rms_eps, rel=1e-6)
    assert cfg.tied_embeddings == s.tied_embeddings
    assert cfg.qkv_bias == (s.arch == "qwen2")
    assert cfg.qk_norm == (s.arch in ("qwen3", "gemma3"))
    assert cfg.has_rope_freqs is False
    if s.arch == "gemma3":
        assert cfg.sliding_window == s.sliding_window == 8
        assert cfg.sliding_layers == (True, True, True, True, True, False, True)
        assert cfg.post_norms and cfg.embed_scale == pytest.approx(math.sqrt(s.hidden_size))
    else:
        assert cfg.sliding_window is None and not any(cfg.sliding_layers)

    # Every tensor: the planned shape and type, finite values of sane size.
    n_layer_tensors = {"llama": 9, "qwen2": 12, "qwen3": 11, "gemma3": 13}[s.arch]
    expected_count = 2 + (0 if s.tied_embeddings else 1) + s.num_layers * n_layer_tensors
    assert len(f.tensors) == expected_count
    fallbacks = set(f.get("forge.synthetic.fallbacks", []) or [])
    for name, t in f.tensors.items():
        vals = gguf.quants.dequantize(t.data, gguf.GGMLQuantizationType(t.ggml_type)).astype(np.float64)
        assert np.isfinite(vals).all(), name
        if len(t.shape) == 1:
            assert t.type_name == "F32", name
            if name.endswith("norm.weight"):
                assert abs(vals.mean() - 1.0) < 0.1 and 0.02 < vals.std() < 0.3, name
            else:  # biases
                assert name.endswith(".bias") and abs(vals.mean()) < 0.1 and 0.03 < vals.std() < 0.3, name
            continue
        rows, cols = t.shape
        want = _expected_type(quant, name, s, cols)
        assert t.type_name == want, f"{name} {t.shape}: {t.type_name}, expected {want}"
        requested = _expected_type(quant, name, s, 256 * 32)  # the type before any fallback
        if want != requested:
            assert f"{name}:{requested}->{want}" in fallbacks
        target = (1.5 if name.endswith(("attn_q.weight", "attn_k.weight")) else 1.0) / math.sqrt(cols)
        assert vals.size == rows * cols
        assert 0.75 * target < vals.std() < 1.3 * target, f"{name}: std {vals.std():.4g}, target {target:.4g}"
        assert abs(vals.mean()) < 0.1 * target, f"{name}: mean {vals.mean():.3g}"
        assert np.abs(vals).max() < 12 * target, name
    # No fallback is claimed that did not happen.
    for fb in fallbacks:
        name, change = fb.split(":")
        assert f.tensor(name).type_name == change.split("->")[1]


def test_k_quant_mix_really_uses_k_quants(written):
    f = GGUFFile(written("tiny-llama", "Q4_K_M"))
    types = {n: t.type_name for n, t in f.tensors.items()}
    assert types["output.weight"] == "Q6_K"
    assert types["token_embd.weight"] == "Q4_K"            # untied: llama.cpp keeps Q4_K
    assert types["blk.0.attn_v.weight"] == "Q4_K" and types["blk.1.attn_v.weight"] == "Q6_K"
    assert types["blk.1.ffn_down.weight"] == "Q6_K" and types["blk.0.attn_q.weight"] == "Q4_K"
    assert f.get("general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    # tiny-qwen2 (hidden 128) falls back like llama-quantize: Q4_K -> Q5_0, Q6_K -> Q8_0.
    g = GGUFFile(written("tiny-qwen2", "Q4_K_M"))
    assert {t.type_name for t in g.tensors.values()} == {"F32", "Q5_0", "Q8_0"}
    assert "token_embd.weight:Q6_K->Q8_0" in g.get("forge.synthetic.fallbacks")


# ---------------------------------------------------------------------------------------------
# Tokenizer metadata
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape_name", TINY)
def test_tokenizer_metadata_is_consistent(shape_name, written):
    s = syn.SHAPES[shape_name]
    f = GGUFFile(written(shape_name, "Q8_0"))
    tokens = f.get("tokenizer.ggml.tokens")
    types = f.get("tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == s.vocab_size == f.get(f"{s.arch}.vocab_size")
    assert len(set(tokens)) == len(tokens)
    bos, eos = f.get("tokenizer.ggml.bos_token_id"), f.get("tokenizer.ggml.eos_token_id")
    eot = f.get("tokenizer.ggml.eot_token_id")
    for tid in (bos, eos, eot):
        assert 0 <= tid < len(tokens) and types[tid] == 3  # CONTROL
    assert f.get("tokenizer.ggml.add_bos_token") is s.add_bos
    assert "{% for message in messages %}" in f.get("tokenizer.chat_template")
    if s.tokenizer == "gpt2":
        assert f.get("tokenizer.ggml.model") == "gpt2"
        assert f.get("tokenizer.ggml.pre") == ("qwen2" if s.arch.startswith("qwen") else "llama-bpe")
        b2u = syn.bytes_to_unicode()
        assert tokens[:256] == [b2u[b] for b in range(256)]
        assert len(set(b2u.values())) == 256
        merges = f.get("tokenizer.ggml.merges")
        assert len(merges) == s.vocab_size - 256 - 4
        index = {t: i for i, t in enumerate(tokens)}
        for rank, m in enumerate(merges):
            a, b = m.split(" ")
            assert a in index and b in index and index[a + b] == 256 + rank, m
        assert [tokens[i] for i in (bos, eos, eot)] == ["<|bos|>", "<|eos|>", "<|im_end|>"]
        assert all(t == 1 for t in types[:256 + len(merges)])
    else:
        assert f.get("tokenizer.ggml.model") == "llama"
        scores = f.get("tokenizer.ggml.scores")
        assert len(scores) == len(tokens)
        assert tokens[:4] == ["<pad>", "<eos>", "<bos>", "<unk>"] and (bos, eos) == (2, 1)
        assert types[f.get("tokenizer.ggml.unknown_token_id")] == 2
        byte_ids = [i for i, t in enumerate(types) if t == 6]
        assert [tokens[i] for i in byte_ids] == [f"<0x{b:02X}>" for b in range(256)]
        normal = [i for i, t in enumerate(types) if t == 1]
        assert len(normal) == s.vocab_size - 256 - len(syn.SPM_SPECIALS)
        assert all(scores[a] > scores[b] for a, b in zip(normal, normal[1:]))  # rank order
        pieces = set(tokens[i] for i in normal)
        for i in normal:  # every multi-character piece is reachable by merging two pieces
            t = tokens[i]
            if len(t) > 1:
                assert any(t[:k] in pieces and t[k:] in pieces for k in range(1, len(t))), t


def test_gpt2_vocab_round_trips_text_through_a_bpe_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    v = syn.gpt2_vocab(600)
    vocab = {t: i for i, t in enumerate(v.tokens)}
    merges = [tuple(m.split(" ")) for m in v.merges]
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    text = "the heat in the east ... Ünïcödé 123 ✓"
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode())          # merges actually apply
    assert vocab["Ġt"] in tok.encode(" the").ids or vocab.get("Ġth") in tok.encode(" the").ids


# ---------------------------------------------------------------------------------------------
# Random blocks of every type
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("type_name", [t for t in syn.supported_types() if t not in ("F32", "F16", "BF16")])
def test_random_blocks_are_valid_and_scaled(type_name):
    qt = gguf.GGMLQuantizationType[type_name]
    block, size = gguf.GGML_QUANT_SIZES[qt]
    a = syn.random_blocks(type_name, 512, 0.02, np.random.default_rng(3))
    assert a.dtype == np.uint8 and a.shape == (512, size)
    v = gguf.quants.dequantize(a, qt).astype(np.float64)
    assert v.shape == (512 * block,) or v.size == 512 * block
    assert np.isfinite(v).all()
    assert 0.017 < v.std() < 0.023, v.std()
    assert abs(v.mean()) < 0.003
    # The scales written really control the magnitude: same bits, 4x the std -> ~4x the values.
    b = syn.random_blocks(type_name, 512, 0.08, np.random.default_rng(3))
    w = gguf.quants.dequantize(b, qt).astype(np.float64)
    assert w.std() / v.std() == pytest.approx(4.0, rel=0.05)
    # Deterministic for a generator state.
    assert np.array_equal(a, syn.random_blocks(type_name, 512, 0.02, np.random.default_rng(3)))


def test_random_blocks_rejects_bad_arguments():
    with pytest.raises(ValueError, match="type_name"):
        syn.random_blocks("F16", 4, 0.02, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unsupported GGML type"):
        syn.random_blocks("Q8_K", 4, 0.02, np.random.default_rng(0))
    with pytest.raises(ValueError, match="std"):
        syn.random_blocks("Q4_0", 4, 0.0, np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------
# Determinism, methods, overrides, real shapes, CLI
# ---------------------------------------------------------------------------------------------

def test_deterministic_for_a_seed_and_independent_of_threads(tmp_path, written):
    a = written("tiny-qwen3", "Q4_K_M")
    b = syn.write_synthetic(tmp_path / "b.gguf", "tiny-qwen3", "Q4_K_M", seed=7, threads=1, progress=False)
    c = syn.write_synthetic(tmp_path / "c.gguf", "tiny-qwen3", "Q4_K_M", seed=8, threads=3, progress=False)
    assert _sha(a) == _sha(b)
    assert _sha(a) != _sha(c)
    # Float weights are the same draws whatever the float type: F16 is F32 rounded.
    f32 = GGUFFile(written("tiny-qwen3", "F32")).tensor("blk.0.attn_q.weight").data
    f16 = GGUFFile(written("tiny-qwen3", "F16")).tensor("blk.0.attn_q.weight").data
    assert np.array_equal(np.asarray(f32).astype(np.float16), np.asarray(f16))


def test_methods_quantize_and_random(tmp_path):
    p = syn.write_synthetic(tmp_path / "q.gguf", "tiny-llama", "Q8_0", method="quantize", progress=False)
    r = syn.write_synthetic(tmp_path / "r.gguf", "tiny-llama", "Q8_0", method="random", progress=False)
    f16 = syn.write_synthetic(tmp_path / "h.gguf", "tiny-llama", "F16", progress=False)
    name = "blk.0.ffn_up.weight"
    q = gguf.quants.dequantize(GGUFFile(p).tensor(name).data, gguf.GGMLQuantizationType.Q8_0)
    h = np.asarray(GGUFFile(f16).tensor(name).data, dtype=np.float32)
    # "quantize" quantizes the very normal draws the float types get.
    assert np.abs(q - h).max() < 0.02 * np.abs(h).max()
    rv = gguf.quants.dequantize(GGUFFile(r).tensor(name).data, gguf.GGMLQuantizationType.Q8_0)
    assert np.isfinite(rv).all() and abs(np.corrcoef(rv.ravel(), h.ravel())[0, 1]) < 0.05
    with pytest.raises(ValueError, match="method"):
        syn.write_synthetic(tmp_path / "x.gguf", "tiny-llama", "Q8_0", method="fast")


def test_overrides_fallback_policy_and_errors(tmp_path):
    p = syn.write_synthetic(tmp_path / "o.gguf", "tiny-qwen2", "Q4_K_M", num_layers=1, hidden_size=256,
                            fallback="q8_0", progress=False)
    cfg = ModelConfig.from_gguf(GGUFFile(p))
    assert cfg.num_layers == 1 and cfg.hidden_size == 256
    f = GGUFFile(p)
    # hidden 256 lets Q4_K through; ffn_down's 384-wide rows still fall back, to Q8_0 by policy.
    assert f.tensor("blk.0.attn_q.weight").type_name == "Q4_K"
    assert f.tensor("blk.0.ffn_down.weight").type_name == "Q8_0"
    with pytest.raises(ValueError, match="unknown shape"):
        syn.write_synthetic(tmp_path / "e.gguf", "gpt-17")
    with pytest.raises(ValueError, match="unknown quant"):
        syn.write_synthetic(tmp_path / "e.gguf", "tiny-llama", "Q4_K_XL")
    with pytest.raises(ValueError, match="override"):
        syn.write_synthetic(tmp_path / "e.gguf", "tiny-llama", hidden=64)
    with pytest.raises(ValueError, match="num_kv_heads"):
        syn.write_synthetic(tmp_path / "e.gguf", "tiny-llama", num_kv_heads=3)
    with pytest.raises(ValueError, match="vocab_size"):
        syn.write_synthetic(tmp_path / "e.gguf", "tiny-llama", vocab_size=100)
    with pytest.raises(ValueError, match="seed"):
        syn.write_synthetic(tmp_path / "e.gguf", "tiny-llama", seed=-1)
    assert not list(tmp_path.glob("*.partial"))


# Parameter counts of the real models (HF model cards / llama.cpp) and llama.cpp Q4_K_M sizes.
REAL = {
    "llama3-8b": (8_030_261_248, 4.92e9),
    "llama3.2-1b": (1_235_814_400, 0.81e9),
    "qwen2-7b": (7_615_616_512, 4.68e9),
    "qwen3-8b": (8_190_735_360, 5.03e9),
    "gemma3-1b": (999_885_952, 0.81e9),
}


@pytest.mark.parametrize("shape_name", sorted(REAL))
def test_real_shape_plans_match_the_real_models(shape_name):
    params, q4km_bytes = REAL[shape_name]
    plan = syn.plan_tensors(shape_name, "Q4_K_M")
    assert sum(t.n_elements for t in plan if t.kind != "rope_freqs") == params
    assert sum(t.n_bytes for t in plan) == pytest.approx(q4km_bytes, rel=0.02)
    names = [t.name for t in plan]
    assert len(names) == len(set(names))


def test_llama3_rope_freqs_tensor(tmp_path):
    # llama3-8b geometry (head_dim 128, base 500000, 3.1 scaling), shrunk to one small layer.
    p = syn.write_synthetic(tmp_path / "l3.gguf", "llama3-8b", "Q4_K_M", num_layers=1, hidden_size=512,
                            num_heads=4, num_kv_heads=1, intermediate_size=512, vocab_size=300, progress=False)
    f = GGUFFile(p)
    cfg = ModelConfig.from_gguf(f)
    assert cfg.has_rope_freqs and cfg.head_dim == 128 and cfg.rope_base == 500000.0
    rf = np.asarray(f.tensor("rope_freqs.weight").data, dtype=np.float64)
    assert rf.shape == (64,)
    # Llama 3.1: wavelengths under 8192/4 keep their frequency, over 8192/1 are divided by 8,
    # and in between the divisor moves smoothly.
    freqs = 500000.0 ** (-np.arange(0, 128, 2) / 128)
    wl = 2 * np.pi / freqs
    assert np.all(rf[wl < 2048] == 1.0) and np.all(rf[wl > 8192] == 8.0)
    mid = (wl >= 2048) & (wl <= 8192)
    assert mid.any() and np.all((rf[mid] >= 1.0) & (rf[mid] <= 8.0)) and np.all(np.diff(rf) >= 0)
    smooth = (8192 / wl[mid] - 1) / (4 - 1)
    assert np.allclose(rf[mid], 1 / ((1 - smooth) / 8 + smooth), rtol=1e-6)


def test_cli_writes_and_lists(tmp_path, capsys):
    out = tmp_path / "cli.gguf"
    assert syn.main(["--shape", "tiny-llama", "--quant", "Q5_K", "--seed", "3", "--set", "num_layers=1",
                     "--no-progress", str(out)]) == 0
    cfg = ModelConfig.from_gguf(GGUFFile(out))
    assert cfg.num_layers == 1
    assert GGUFFile(out).get("forge.synthetic.seed") == 3
    assert syn.main(["--shape", "tiny-gemma3", "--quant", "Q4_K_M", "--list", str(tmp_path / "unused.gguf")]) == 0
    listing = capsys.readouterr().out
    assert "blk.6.post_ffw_norm.weight" in listing and "Q6_K" in listing
    assert not (tmp_path / "unused.gguf").exists()
    with pytest.raises(SystemExit):
        syn.main(["--shape", "nope", str(out)])
