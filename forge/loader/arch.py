"""Architectures as data: hparam keys, tensor roles and name templates, quirks.

An architecture is a table, not a class. `ModelConfig.from_metadata` reads the hparams named
here, and `runtime/weights.py` finds tensors by role through the name templates. Adding an
architecture means adding an entry (and, for a genuinely new block structure, a flag that
`runtime/plan.py` understands).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Tensor roles -> GGUF names. "{i}" is the layer index. Shared by every architecture here.
GLOBAL_TENSORS: dict[str, str] = {
    "embed": "token_embd.weight",
    "output_norm": "output_norm.weight",
    "output": "output.weight",
    "rope_freqs": "rope_freqs.weight",
}

LAYER_TENSORS: dict[str, str] = {
    "attn_norm": "blk.{i}.attn_norm.weight",
    "wq": "blk.{i}.attn_q.weight",
    "wk": "blk.{i}.attn_k.weight",
    "wv": "blk.{i}.attn_v.weight",
    "wo": "blk.{i}.attn_output.weight",
    "bq": "blk.{i}.attn_q.bias",
    "bk": "blk.{i}.attn_k.bias",
    "bv": "blk.{i}.attn_v.bias",
    "q_norm": "blk.{i}.attn_q_norm.weight",
    "k_norm": "blk.{i}.attn_k_norm.weight",
    "post_attn_norm": "blk.{i}.post_attention_norm.weight",
    "ffn_norm": "blk.{i}.ffn_norm.weight",
    "w_gate": "blk.{i}.ffn_gate.weight",
    "w_up": "blk.{i}.ffn_up.weight",
    "w_down": "blk.{i}.ffn_down.weight",
    "post_ffn_norm": "blk.{i}.post_ffw_norm.weight",
}

# Hparam keys, relative to the "{arch}." prefix.
HPARAM_KEYS: dict[str, str] = {
    "context_length": "context_length",
    "hidden_size": "embedding_length",
    "num_layers": "block_count",
    "intermediate_size": "feed_forward_length",
    "num_heads": "attention.head_count",
    "num_kv_heads": "attention.head_count_kv",
    "rms_eps": "attention.layer_norm_rms_epsilon",
    "key_length": "attention.key_length",
    "value_length": "attention.value_length",
    "rope_base": "rope.freq_base",
    "rope_dim": "rope.dimension_count",
    "rope_scaling_type": "rope.scaling.type",
    "rope_scaling_factor": "rope.scaling.factor",
    "sliding_window": "attention.sliding_window",
    "attn_softcap": "attn_logit_softcapping",
    "final_softcap": "final_logit_softcapping",
    "vocab_size": "vocab_size",
}


@dataclass(frozen=True, slots=True)
class ArchSpec:
    name: str
    rope_style: str = "norm"            # "norm" (adjacent pairs) or "neox" (halves)
    act: str = "silu"                   # gated FFN activation: "silu" or "gelu_tanh"
    required: tuple[str, ...] = ()      # layer roles that must exist
    optional: tuple[str, ...] = ()      # layer roles that may exist
    qkv_bias: bool = False
    qk_norm: bool = False
    post_norms: bool = False            # sandwich norms after attention and FFN (gemma)
    embed_scale_sqrt_hidden: bool = False
    # Sliding-window layer pattern: every `swa_period`-th layer (1-based) is global. 0 = none.
    swa_period: int = 0
    rope_base_local: float | None = None  # rope base of sliding layers
    # Attention scale: None -> 1/sqrt(head_dim).
    attn_scale_from: str | None = None
    aliases: tuple[str, ...] = field(default=())


_CORE = ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w_gate", "w_up", "w_down")

ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec(
        name="llama", rope_style="norm", act="silu", required=_CORE,
        optional=("bq", "bk", "bv"), aliases=("mistral",),
    ),
    "qwen2": ArchSpec(
        name="qwen2", rope_style="neox", act="silu", required=_CORE + ("bq", "bk", "bv"),
        qkv_bias=True,
    ),
    "qwen3": ArchSpec(
        name="qwen3", rope_style="neox", act="silu", required=_CORE + ("q_norm", "k_norm"),
        qk_norm=True,
    ),
    "gemma3": ArchSpec(
        name="gemma3", rope_style="neox", act="gelu_tanh",
        required=_CORE + ("q_norm", "k_norm", "post_attn_norm", "post_ffn_norm"),
        qk_norm=True, post_norms=True, embed_scale_sqrt_hidden=True,
        swa_period=6, rope_base_local=10000.0,
    ),
}

for _spec in list(ARCHS.values()):
    for _alias in _spec.aliases:
        ARCHS[_alias] = _spec


def get_arch(name: str) -> ArchSpec:
    try:
        return ARCHS[name]
    except KeyError:
        known = ", ".join(sorted(ARCHS))
        raise KeyError(f"unknown architecture {name!r} (supported: {known})") from None


def layer_tensor_name(role: str, i: int) -> str:
    return LAYER_TENSORS[role].format(i=i)
