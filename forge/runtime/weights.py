"""Tensors onto a backend, in their GGUF types (quantized stays quantized on the GPU).

`load_weights` walks the arch table's tensor roles, checks every required tensor exists with the
shape the config implies, and hands the raw GGUF bytes to the backend, which decides how to hold
them (`Backend.load_qtensor`). 1-D tensors (norms, biases, rope factors) become float32 arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from forge.errors import ModelFileError
from forge.loader.arch import GLOBAL_TENSORS, LAYER_TENSORS, layer_tensor_name
from forge.loader.config import ModelConfig
from forge.loader.reader import GGUFFile, TensorInfo


@dataclass(slots=True)
class LayerWeights:
    t: dict[str, Any] = field(default_factory=dict)

    def get(self, role: str):
        return self.t.get(role)

    def __getitem__(self, role: str):
        return self.t[role]


@dataclass(slots=True)
class ModelWeights:
    embed: Any
    output: Any            # the embedding table again when tied
    output_norm: Any
    rope_freqs: Any
    layers: list[LayerWeights]


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    q = cfg.num_heads * cfg.head_dim
    kv = cfg.num_kv_heads * cfg.head_dim
    vv = cfg.num_kv_heads * cfg.v_head_dim
    h, f = cfg.hidden_size, cfg.intermediate_size
    return {
        "attn_norm": (h,), "ffn_norm": (h,), "post_attn_norm": (h,), "post_ffn_norm": (h,),
        "wq": (q, h), "wk": (kv, h), "wv": (vv, h), "wo": (h, cfg.num_heads * cfg.v_head_dim),
        "bq": (q,), "bk": (kv,), "bv": (vv,),
        "q_norm": (cfg.head_dim,), "k_norm": (cfg.head_dim,),
        "w_gate": (f, h), "w_up": (f, h), "w_down": (h, f),
    }


def _vector(backend, f: GGUFFile, info: TensorInfo) -> Any:
    from gguf import GGMLQuantizationType, quants

    arr = np.asarray(info.data)
    if info.ggml_type != GGMLQuantizationType.F32:
        arr = quants.dequantize(arr, GGMLQuantizationType(info.ggml_type))
    return backend.asarray(np.ascontiguousarray(arr, dtype=np.float32).reshape(-1))


def _matrix(backend, info: TensorInfo):
    if len(info.shape) != 2:
        raise ModelFileError("", f"tensor {info.name!r} should be 2-D, has shape {info.shape}")
    raw = np.asarray(info.data)
    return backend.load_qtensor(info.ggml_type, (int(info.shape[0]), int(info.shape[1])), raw)


def load_weights(f: GGUFFile, cfg: ModelConfig, backend, progress: bool = False) -> ModelWeights:
    spec = cfg.spec
    shapes = _expected_shapes(cfg)
    roles = list(spec.required) + [r for r in spec.optional if r not in spec.required]

    def check(info: TensorInfo, role: str) -> None:
        want = shapes.get(role)
        if want is not None and tuple(info.shape) != want:
            raise ModelFileError(f.path, f"tensor {info.name!r} has shape {info.shape}, expected {want}")

    # Check that everything exists before uploading anything.
    for i in range(cfg.num_layers):
        for role in spec.required:
            check(f.tensor(layer_tensor_name(role, i)), role)

    total = cfg.num_layers + 2
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="loading weights", unit="layer", leave=False)
    embed_info = f.tensor(GLOBAL_TENSORS["embed"])
    embed = _matrix(backend, embed_info)
    output = embed
    if f.has(GLOBAL_TENSORS["output"]):
        out_info = f.tensor(GLOBAL_TENSORS["output"])
        if tuple(out_info.shape) != (cfg.vocab_size, cfg.hidden_size):
            raise ModelFileError(f.path, f"tensor 'output.weight' has shape {out_info.shape}, expected {(cfg.vocab_size, cfg.hidden_size)}")
        output = _matrix(backend, out_info)
    output_norm = _vector(backend, f, f.tensor(GLOBAL_TENSORS["output_norm"]))
    rope_freqs = None
    if f.has(GLOBAL_TENSORS["rope_freqs"]):
        rope_freqs = _vector(backend, f, f.tensor(GLOBAL_TENSORS["rope_freqs"]))
    if bar:
        bar.update(2)
    layers = []
    for i in range(cfg.num_layers):
        lw = LayerWeights()
        for role in roles:
            name = layer_tensor_name(role, i)
            if not f.has(name):
                continue
            info = f.tensor(name)
            check(info, role)
            lw.t[role] = _vector(backend, f, info) if len(info.shape) == 1 else _matrix(backend, info)
        layers.append(lw)
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return ModelWeights(embed=embed, output=output, output_norm=output_norm, rope_freqs=rope_freqs,
                        layers=layers)


__all__ = ["LayerWeights", "ModelWeights", "load_weights", "LAYER_TENSORS"]
