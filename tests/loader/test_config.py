"""ModelConfig.from_gguf: the real models' hyperparameters, synthetic models, inference of missing
hparams from tensor shapes, and a ModelFileError naming the problem for bad files."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFValueType as VT
from gguf import GGUFWriter

from forge.errors import ModelFileError
from forge.loader.config import ModelConfig
from forge.loader.reader import GGUFFile

# ---------------------------------------------------------------------------------------------
# Real models
# ---------------------------------------------------------------------------------------------


def test_smollm2(model_path):
    cfg = ModelConfig.from_gguf(GGUFFile(model_path("smollm2-135m")))
    assert cfg.arch == "llama"
    assert cfg.num_layers == 30 and cfg.hidden_size == 576
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.v_head_dim) == (9, 3, 64, 64)
    assert cfg.intermediate_size == 1536 and cfg.vocab_size == 49152 and cfg.context_length == 8192
    assert cfg.rope_base == 100000.0 and cfg.rope_dim == 64 and cfg.rope_style == "norm"
    assert cfg.rope_freq_scale == 1.0 and cfg.rope_base_local is None
    assert cfg.rms_eps == pytest.approx(1e-5, rel=1e-6)
    assert cfg.tied_embeddings and not cfg.has_rope_freqs
    assert cfg.sliding_window is None and cfg.sliding_layers == (False,) * 30
    assert cfg.act == "silu" and not cfg.qkv_bias and not cfg.qk_norm and not cfg.post_norms
    assert cfg.embed_scale is None and cfg.attn_softcap is None and cfg.final_softcap is None
    assert cfg.attn_scale == pytest.approx(1 / 8)


def test_gemma3(model_path):
    cfg = ModelConfig.from_gguf(GGUFFile(model_path("gemma3-270m")))
    assert cfg.arch == "gemma3"
    assert cfg.num_layers == 18 and cfg.hidden_size == 640
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.v_head_dim) == (4, 1, 256, 256)
    assert cfg.intermediate_size == 2048 and cfg.vocab_size == 262144 and cfg.context_length == 32768
    assert cfg.sliding_window == 512
    assert [i for i, s in enumerate(cfg.sliding_layers) if not s] == [5, 11, 17]
    assert [cfg.layer_window(i) for i in (0, 4, 5, 6, 17)] == [512, 512, None, 512, None]
    assert cfg.rope_base == 1e6 and cfg.rope_base_local == 10000.0 and cfg.rope_style == "neox"
    assert cfg.layer_rope_base(0) == 10000.0 and cfg.layer_rope_base(5) == 1e6
    assert cfg.embed_scale == pytest.approx(math.sqrt(640))
    assert cfg.act == "gelu_tanh" and cfg.qk_norm and cfg.post_norms and cfg.tied_embeddings
    assert cfg.rms_eps == pytest.approx(1e-6, rel=1e-6)
    assert cfg.attn_scale == pytest.approx(1 / 16)


# ---------------------------------------------------------------------------------------------
# Synthetic models (forge.testing.synthetic): what it writes comes back
# ---------------------------------------------------------------------------------------------


def test_synthetic_tiny_gemma3(tmp_path):
    from forge.testing.synthetic import write_synthetic

    p = write_synthetic(tmp_path / "g.gguf", "tiny-gemma3", "F32", threads=1, sliding_window=16)
    cfg = ModelConfig.from_gguf(GGUFFile(p))
    assert (cfg.arch, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == \
           ("gemma3", 256, 7, 4, 1, 128)
    assert cfg.sliding_window == 16 and cfg.sliding_layers == (True,) * 5 + (False, True)
    assert cfg.embed_scale == 16.0 and cfg.rope_base_local == 10000.0 and cfg.rope_base == 1e6


def test_synthetic_tiny_qwen2_overrides(tmp_path):
    from forge.testing.synthetic import write_synthetic

    p = write_synthetic(tmp_path / "q.gguf", "tiny-qwen2", "Q8_0", threads=1, num_layers=3,
                        num_kv_heads=1, vocab_size=300, tied_embeddings=False)
    cfg = ModelConfig.from_gguf(GGUFFile(p))
    assert (cfg.arch, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size) == ("qwen2", 3, 4, 1, 300)
    assert cfg.qkv_bias and cfg.rope_style == "neox" and not cfg.tied_embeddings


# ---------------------------------------------------------------------------------------------
# Hand-written minimal models: inference of missing hparams
# ---------------------------------------------------------------------------------------------

_DIMS = dict(hidden=96, layers=2, heads=6, kv_heads=2, head_dim=32, v_head_dim=24, ffn=160, vocab=70)


def _model(path: Path, arch: str = "llama", *, drop: tuple[str, ...] = (), extra: dict | None = None,
           drop_tensors: tuple[str, ...] = (), output: bool = False, bias: bool = False,
           tensor_shapes: dict | None = None, **dims) -> Path:
    """A minimal model with F32 tensors. `drop`: hparam keys (without the arch prefix) left out;
    `extra`: key -> (value, GGUFValueType[, sub_type]) added (the arch prefix is applied to keys
    starting with '.'). Head dims differ from hidden/heads so inference must use tensor shapes."""
    d = {**_DIMS, **dims}
    h, nh, nkv, hd, vhd = d["hidden"], d["heads"], d["kv_heads"], d["head_dim"], d["v_head_dim"]
    w = GGUFWriter(str(path), arch)
    hp = {
        "context_length": (1024, VT.UINT32),
        "embedding_length": (h, VT.UINT32),
        "block_count": (d["layers"], VT.UINT32),
        "feed_forward_length": (d["ffn"], VT.UINT32),
        "attention.head_count": (nh, VT.UINT32),
        "attention.head_count_kv": (nkv, VT.UINT32),
        "attention.key_length": (hd, VT.UINT32),
        "attention.value_length": (vhd, VT.UINT32),
        "rope.freq_base": (50000.0, VT.FLOAT32),
        "rope.dimension_count": (hd, VT.UINT32),
        "attention.layer_norm_rms_epsilon": (1e-5, VT.FLOAT32),
        "vocab_size": (d["vocab"], VT.UINT32),
    }
    for k, (v, vt) in hp.items():
        if k not in drop:
            w.add_key_value(f"{arch}.{k}", v, vt)
    w.add_string("general.name", "mini")
    for k, spec in (extra or {}).items():
        key = arch + k if k.startswith(".") else k
        w.add_key_value(key, spec[0], spec[1], sub_type=spec[2] if len(spec) > 2 else None)
    shapes = {"token_embd.weight": (d["vocab"], h), "output_norm.weight": (h,)}
    if output:
        shapes["output.weight"] = (d["vocab"], h)
    for i in range(d["layers"]):
        b = f"blk.{i}."
        shapes.update({
            b + "attn_norm.weight": (h,), b + "ffn_norm.weight": (h,),
            b + "attn_q.weight": (nh * hd, h), b + "attn_k.weight": (nkv * hd, h),
            b + "attn_v.weight": (nkv * vhd, h), b + "attn_output.weight": (h, nh * vhd),
            b + "ffn_gate.weight": (d["ffn"], h), b + "ffn_up.weight": (d["ffn"], h),
            b + "ffn_down.weight": (h, d["ffn"]),
        })
        if bias:
            shapes.update({b + "attn_q.bias": (nh * hd,), b + "attn_k.bias": (nkv * hd,),
                           b + "attn_v.bias": (nkv * vhd,)})
        if arch == "gemma3":
            shapes.update({b + "attn_q_norm.weight": (hd,), b + "attn_k_norm.weight": (hd,),
                           b + "post_attention_norm.weight": (h,), b + "post_ffw_norm.weight": (h,)})
    shapes.update(tensor_shapes or {})
    rng = np.random.default_rng(0)
    for name, shape in shapes.items():
        if name not in drop_tensors:
            w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _cfg(path: Path) -> ModelConfig:
    return ModelConfig.from_gguf(GGUFFile(path))


def _cfg_error(path: Path) -> str:
    with pytest.raises(ModelFileError) as ei:
        _cfg(path)
    assert "\n" not in str(ei.value) and str(ei.value).startswith(str(path))
    return ei.value.problem


def test_complete_minimal_model(tmp_path):
    cfg = _cfg(_model(tmp_path / "m.gguf"))
    assert (cfg.arch, cfg.name, cfg.hidden_size, cfg.num_layers) == ("llama", "mini", 96, 2)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.v_head_dim) == (6, 2, 32, 24)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.context_length) == (160, 70, 1024)
    assert cfg.rope_base == 50000.0 and cfg.rope_dim == 32
    assert cfg.rms_eps == pytest.approx(1e-5, rel=1e-6)
    assert cfg.attn_scale == pytest.approx(1 / math.sqrt(32))
    assert cfg.tied_embeddings and not cfg.qkv_bias


@pytest.mark.parametrize("dropped, field, want", [
    (("attention.head_count_kv",), "num_kv_heads", 2),              # wk rows / head_dim
    (("vocab_size",), "vocab_size", 70),                            # token_embd rows
    (("feed_forward_length",), "intermediate_size", 160),           # ffn_up rows
    (("embedding_length",), "hidden_size", 96),                     # token_embd cols
    (("attention.value_length",), "v_head_dim", 24),                # wv rows / kv heads
    (("rope.dimension_count",), "rope_dim", 32),                    # = head_dim
    (("context_length",), "context_length", 4096),                  # default
    (("rope.freq_base",), "rope_base", 10000.0),                    # default
    (("attention.layer_norm_rms_epsilon",), "rms_eps", 1e-6),       # default
])
def test_inferred_hparams(tmp_path, dropped, field, want):
    cfg = _cfg(_model(tmp_path / "m.gguf", drop=dropped))
    assert getattr(cfg, field) == pytest.approx(want)


def test_head_dims_inferred_from_shapes(tmp_path):
    # No key/value lengths, no kv head count: everything from the projections.
    cfg = _cfg(_model(tmp_path / "m.gguf", drop=("attention.key_length", "attention.value_length",
                                                  "attention.head_count_kv", "rope.dimension_count")))
    assert (cfg.head_dim, cfg.num_kv_heads, cfg.v_head_dim, cfg.rope_dim) == (32, 2, 24, 32)
    assert cfg.attn_scale == pytest.approx(1 / math.sqrt(32))


def test_everything_inferable_missing(tmp_path):
    drop = ("embedding_length", "feed_forward_length", "attention.head_count_kv", "attention.key_length",
            "attention.value_length", "vocab_size", "rope.dimension_count", "context_length")
    cfg = _cfg(_model(tmp_path / "m.gguf", drop=drop, hidden=64, heads=4, kv_heads=1, head_dim=48,
                      v_head_dim=48, ffn=80, vocab=33))
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_kv_heads, cfg.head_dim, cfg.v_head_dim,
            cfg.vocab_size, cfg.rope_dim) == (64, 80, 1, 48, 48, 33, 48)


def test_padded_vocab_size_uses_the_table(tmp_path):
    p = _model(tmp_path / "m.gguf", drop=("vocab_size",), extra={".vocab_size": (128, VT.UINT32)})
    assert _cfg(p).vocab_size == 70


def test_per_layer_array_hparam_takes_the_first(tmp_path):
    p = _model(tmp_path / "m.gguf", drop=("attention.head_count_kv",),
               extra={".attention.head_count_kv": ([2, 2], VT.ARRAY, VT.UINT32)})
    assert _cfg(p).num_kv_heads == 2


def test_untied_output_and_bias(tmp_path):
    cfg = _cfg(_model(tmp_path / "m.gguf", output=True, bias=True))
    assert not cfg.tied_embeddings and cfg.qkv_bias


def test_alias_linear_rope_scaling_and_softcaps(tmp_path):
    p = _model(tmp_path / "m.gguf", "mistral", extra={
        ".rope.scaling.type": ("linear", VT.STRING), ".rope.scaling.factor": (4.0, VT.FLOAT32),
        ".attn_logit_softcapping": (50.0, VT.FLOAT32), ".final_logit_softcapping": (30.0, VT.FLOAT32)})
    cfg = _cfg(p)
    assert cfg.arch == "llama" and cfg.rope_freq_scale == 0.25
    assert cfg.attn_softcap == 50.0 and cfg.final_softcap == 30.0


def test_gemma3_without_sliding_window_has_no_local_layers(tmp_path):
    cfg = _cfg(_model(tmp_path / "m.gguf", "gemma3", layers=7))
    assert cfg.sliding_window is None and cfg.sliding_layers == (False,) * 7 and cfg.rope_base_local is None
    assert cfg.embed_scale == pytest.approx(math.sqrt(96))
    cfg = _cfg(_model(tmp_path / "w.gguf", "gemma3", layers=7,
                      extra={".attention.sliding_window": (4, VT.UINT32)}))
    assert cfg.sliding_window == 4 and [i for i, s in enumerate(cfg.sliding_layers) if not s] == [5]


# ---------------------------------------------------------------------------------------------
# Bad files: ModelFileError naming the problem
# ---------------------------------------------------------------------------------------------


def test_unknown_architecture(tmp_path):
    assert _cfg_error(_model(tmp_path / "m.gguf", "mamba9")) == \
        "unknown architecture 'mamba9' (supported: gemma3, llama, mistral, qwen2, qwen3)"


def test_missing_architecture(tmp_path):
    p = _model(tmp_path / "m.gguf")
    f = GGUFFile(p)
    del f.metadata["general.architecture"]
    with pytest.raises(ModelFileError, match="missing metadata key 'general.architecture'"):
        ModelConfig.from_gguf(f)


@pytest.mark.parametrize("tensor", ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight",
                                    "blk.0.attn_v.weight", "blk.0.ffn_up.weight"])
def test_missing_tensor(tmp_path, tensor):
    assert _cfg_error(_model(tmp_path / "m.gguf", drop_tensors=(tensor,))) == f"missing tensor {tensor!r}"


@pytest.mark.parametrize("key", ["block_count", "attention.head_count"])
def test_missing_required_key(tmp_path, key):
    assert _cfg_error(_model(tmp_path / "m.gguf", drop=(key,))) == f"missing metadata key 'llama.{key}'"


def test_embedding_width_mismatch(tmp_path):
    p = _model(tmp_path / "m.gguf", drop=("embedding_length",), extra={".embedding_length": (100, VT.UINT32)})
    assert _cfg_error(p) == "token_embd.weight has 96 columns but embedding_length is 100"


def test_zero_heads(tmp_path):
    p = _model(tmp_path / "m.gguf", drop=("attention.head_count",),
               extra={".attention.head_count": (0, VT.UINT32)})
    assert _cfg_error(p) == "metadata key 'llama.attention.head_count' must be positive, got 0"


def test_zero_kv_heads_inferred(tmp_path):
    # wk has 16 rows, fewer than one head of 32: the inferred kv head count is 0.
    p = _model(tmp_path / "m.gguf", drop=("attention.head_count_kv",),
               tensor_shapes={"blk.0.attn_k.weight": (16, 96)})
    assert _cfg_error(p) == "llama.attention.head_count_kv (inferred from tensor shapes) must be positive, got 0"


def test_non_integer_hparam(tmp_path):
    p = _model(tmp_path / "m.gguf", drop=("block_count",), extra={".block_count": ("two", VT.STRING)})
    assert _cfg_error(p) == "metadata key 'llama.block_count' must be an integer, got 'two'"


def test_heads_not_multiple_of_kv_heads(tmp_path):
    p = _model(tmp_path / "m.gguf", drop=("attention.head_count_kv",),
               extra={".attention.head_count_kv": (4, VT.UINT32)})
    assert _cfg_error(p) == "inconsistent hyperparameters: num_heads 6 is not a multiple of num_kv_heads 4"


def test_one_dimensional_projection(tmp_path):
    p = _model(tmp_path / "m.gguf", tensor_shapes={"blk.0.attn_q.weight": (192,)})
    assert _cfg_error(p) == "tensor 'blk.0.attn_q.weight' should be 2-D, has shape (192,)"
