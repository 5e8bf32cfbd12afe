"""ModelConfig: the hyperparameters of a model, read from GGUF metadata through the arch table,
with missing fields inferred from tensor shapes."""
from __future__ import annotations

import math
from dataclasses import dataclass

from forge.errors import ModelFileError
from forge.loader.arch import GLOBAL_TENSORS, HPARAM_KEYS, ArchSpec, get_arch, layer_tensor_name
from forge.loader.reader import GGUFFile


@dataclass(frozen=True, slots=True)
class ModelConfig:
    arch: str
    name: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int            # key/query head dim
    v_head_dim: int
    intermediate_size: int
    context_length: int
    rms_eps: float
    rope_base: float
    rope_dim: int
    rope_style: str
    rope_freq_scale: float
    rope_base_local: float | None
    sliding_window: int | None
    sliding_layers: tuple[bool, ...]
    attn_scale: float
    attn_softcap: float | None
    final_softcap: float | None
    embed_scale: float | None
    act: str
    qkv_bias: bool
    qk_norm: bool
    post_norms: bool
    tied_embeddings: bool
    has_rope_freqs: bool

    def __post_init__(self) -> None:
        for f in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                  "head_dim", "v_head_dim", "intermediate_size", "context_length", "rope_dim"):
            if getattr(self, f) <= 0:
                raise ValueError(f"ModelConfig.{f} must be positive, got {getattr(self, f)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.rope_dim > self.head_dim or self.rope_dim % 2:
            raise ValueError(f"rope_dim {self.rope_dim} must be even and <= head_dim {self.head_dim}")
        if len(self.sliding_layers) != self.num_layers:
            raise ValueError("sliding_layers must have one entry per layer")

    def layer_rope_base(self, i: int) -> float:
        if self.sliding_layers[i] and self.rope_base_local is not None:
            return self.rope_base_local
        return self.rope_base

    def layer_freq_scale(self, i: int) -> float:
        # Linear rope scaling applies to global layers only when local layers have their own base.
        if self.sliding_layers[i] and self.rope_base_local is not None:
            return 1.0
        return self.rope_freq_scale

    def layer_window(self, i: int) -> int | None:
        return self.sliding_window if self.sliding_layers[i] else None

    @property
    def spec(self) -> ArchSpec:
        return get_arch(self.arch)

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "ModelConfig":
        try:
            spec = get_arch(f.arch)
        except KeyError as e:
            raise ModelFileError(f.path, str(e.args[0])) from None
        prefix = f.arch + "."

        def hp(field: str, default=None, required: bool = False):
            key = prefix + HPARAM_KEYS[field]
            v = f.get(key)
            if v is None:
                if required:
                    raise ModelFileError(f.path, f"missing metadata key {key!r}")
                return default
            if isinstance(v, list):  # per-layer arrays: take the first entry
                v = v[0] if v else default
            return v

        def matrix(name: str):
            t = f.tensor(name)
            if len(t.shape) != 2:
                raise ModelFileError(f.path, f"tensor {name!r} should be 2-D, has shape {t.shape}")
            return t

        def positive(field: str, default=None, required: bool = False) -> int:
            """A positive integer hparam, or `default` (inferred from tensor shapes) when absent."""
            key = prefix + HPARAM_KEYS[field]
            src = f"metadata key {key!r}" if f.get(key) is not None else f"{key} (inferred from tensor shapes)"
            v = hp(field, default, required)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ModelFileError(f.path, f"{src} must be an integer, got {v!r}")
            if v <= 0:
                raise ModelFileError(f.path, f"{src} must be positive, got {v}")
            return v

        embed = matrix(GLOBAL_TENSORS["embed"])
        hidden = positive("hidden_size", embed.shape[1])
        if embed.shape[1] != hidden:
            raise ModelFileError(f.path, f"token_embd.weight has {embed.shape[1]} columns but embedding_length is {hidden}")
        num_layers = positive("num_layers", required=True)
        num_heads = positive("num_heads", required=True)
        wq = matrix(layer_tensor_name("wq", 0))
        wk = matrix(layer_tensor_name("wk", 0))
        wv = matrix(layer_tensor_name("wv", 0))
        head_dim = positive("key_length", wq.shape[0] // num_heads)
        num_kv_heads = positive("num_kv_heads", wk.shape[0] // head_dim)
        v_head_dim = positive("value_length", wv.shape[0] // num_kv_heads)
        ffn = matrix(layer_tensor_name("w_up", 0))
        inter = int(hp("intermediate_size", ffn.shape[0]))
        vocab = int(hp("vocab_size", embed.shape[0]))
        if vocab != embed.shape[0]:
            vocab = embed.shape[0]  # the table is the truth; some files record a padded size
        rope_dim = int(hp("rope_dim", head_dim))
        scaling_type = hp("rope_scaling_type")
        factor = hp("rope_scaling_factor")
        freq_scale = 1.0
        if scaling_type in (None, "linear") and factor:
            freq_scale = 1.0 / float(factor)
        window = hp("sliding_window")
        if spec.swa_period and window:
            sliding = tuple((i + 1) % spec.swa_period != 0 for i in range(num_layers))
        else:
            sliding = (False,) * num_layers
            window = None
        tied = not f.has(GLOBAL_TENSORS["output"])
        attn_softcap = hp("attn_softcap")
        final_softcap = hp("final_softcap")
        try:
            return cls(
                arch=spec.name,
                name=str(f.get("general.name", f.path.stem)),
                vocab_size=vocab,
                hidden_size=hidden,
                num_layers=num_layers,
                num_heads=num_heads,
                num_kv_heads=num_kv_heads,
                head_dim=head_dim,
                v_head_dim=v_head_dim,
                intermediate_size=inter,
                context_length=int(hp("context_length", 4096)),
                rms_eps=float(hp("rms_eps", 1e-6)),
                rope_base=float(hp("rope_base", 10000.0)),
                rope_dim=rope_dim,
                rope_style=spec.rope_style,
                rope_freq_scale=freq_scale,
                rope_base_local=spec.rope_base_local if window else None,
                sliding_window=int(window) if window else None,
                sliding_layers=sliding,
                attn_scale=1.0 / math.sqrt(head_dim),
                attn_softcap=float(attn_softcap) if attn_softcap else None,
                final_softcap=float(final_softcap) if final_softcap else None,
                embed_scale=math.sqrt(hidden) if spec.embed_scale_sqrt_hidden else None,
                act=spec.act,
                qkv_bias=spec.qkv_bias or f.has(layer_tensor_name("bq", 0)),
                qk_norm=spec.qk_norm,
                post_norms=spec.post_norms,
                tied_embeddings=tied,
                has_rope_freqs=f.has(GLOBAL_TENSORS["rope_freqs"]),
            )
        except ValueError as e:  # __post_init__'s consistency checks: a bad file, not a bug
            raise ModelFileError(f.path, f"inconsistent hyperparameters: {e}") from None
