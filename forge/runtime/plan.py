"""Per-layer plan for a model: which ops run, with which weights, fusions and parameters.

The plan is built once at load from the ModelConfig (architecture quirks as data) and the
loaded weights. `runtime/model.py` only walks it.

Fusions decided here:
- Q, K and V projections share one matrix when the backend can concatenate them
  (`Backend.fuse_rows`, same GGML type and columns): one GEMV/GEMM instead of three.
- FFN gate and up likewise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from forge.loader.config import ModelConfig
from forge.runtime.backend import QTensor, RopeSpec
from forge.runtime.weights import ModelWeights


@dataclass(slots=True)
class LayerPlan:
    index: int
    attn_norm: Any
    wqkv: QTensor | None          # fused [q; k; v] rows, or None
    wqk: QTensor | None           # fused [q; k] rows when v alone has another type (K-quant
                                  # mixes such as Q4_K_M keep attn_v in Q6_K), else None
    bqk: Any                      # its fused bias or None
    wq: QTensor
    wk: QTensor
    wv: QTensor
    bqkv: Any                     # fused bias or None
    bq: Any
    bk: Any
    bv: Any
    q_norm: Any
    k_norm: Any
    wo: QTensor
    post_attn_norm: Any
    ffn_norm: Any
    w_gate_up: QTensor | None
    w_gate: QTensor
    w_up: QTensor
    w_down: QTensor
    post_ffn_norm: Any
    rope: RopeSpec
    window: int | None
    softcap: float | None


@dataclass(slots=True)
class ModelPlan:
    cfg: ModelConfig
    embed: QTensor
    embed_scale: float | None
    output: QTensor
    output_norm: Any
    final_softcap: float | None
    layers: list[LayerPlan]
    q_size: int
    kv_size: int
    v_size: int


def _fuse(backend, mats: list[QTensor]) -> QTensor | None:
    fuse = getattr(backend, "fuse_rows", None)
    if fuse is None:
        return None
    if len({(m.ggml_type, m.cols, m.layout) for m in mats}) != 1:
        return None
    return fuse(mats)


def _fuse_bias(backend, biases: list[Any]) -> Any:
    if any(b is None for b in biases):
        return None
    return backend.concat(biases)


def build_plan(cfg: ModelConfig, w: ModelWeights, backend, fuse: bool = True) -> ModelPlan:
    layers: list[LayerPlan] = []
    for i, lw in enumerate(w.layers):
        rope = RopeSpec(
            rot_dim=cfg.rope_dim,
            base=cfg.layer_rope_base(i),
            style=cfg.rope_style,
            freq_scale=cfg.layer_freq_scale(i),
            freq_factors=w.rope_freqs,
        )
        wq, wk, wv = lw["wq"], lw["wk"], lw["wv"]
        wqkv = _fuse(backend, [wq, wk, wv]) if fuse else None
        bqkv = _fuse_bias(backend, [lw.get("bq"), lw.get("bk"), lw.get("bv")]) if wqkv is not None else None
        wqk = _fuse(backend, [wq, wk]) if fuse and wqkv is None else None
        bqk = _fuse_bias(backend, [lw.get("bq"), lw.get("bk")]) if wqk is not None else None
        gate_up = _fuse(backend, [lw["w_gate"], lw["w_up"]]) if fuse else None
        layers.append(LayerPlan(
            index=i,
            attn_norm=lw["attn_norm"],
            wqkv=wqkv, wqk=wqk, bqk=bqk, wq=wq, wk=wk, wv=wv,
            bqkv=bqkv, bq=lw.get("bq"), bk=lw.get("bk"), bv=lw.get("bv"),
            q_norm=lw.get("q_norm") if cfg.qk_norm else None,
            k_norm=lw.get("k_norm") if cfg.qk_norm else None,
            wo=lw["wo"],
            post_attn_norm=lw.get("post_attn_norm") if cfg.post_norms else None,
            ffn_norm=lw["ffn_norm"],
            w_gate_up=gate_up, w_gate=lw["w_gate"], w_up=lw["w_up"], w_down=lw["w_down"],
            post_ffn_norm=lw.get("post_ffn_norm") if cfg.post_norms else None,
            rope=rope,
            window=cfg.layer_window(i),
            softcap=cfg.attn_softcap,
        ))
    return ModelPlan(
        cfg=cfg, embed=w.embed, embed_scale=cfg.embed_scale, output=w.output,
        output_norm=w.output_norm, final_softcap=cfg.final_softcap, layers=layers,
        q_size=cfg.num_heads * cfg.head_dim, kv_size=cfg.num_kv_heads * cfg.head_dim,
        v_size=cfg.num_kv_heads * cfg.v_head_dim,
    )
