"""The op contract that both backends implement, and the factory that picks one.

Every op has one meaning, written down here; `forge/cpu/` fulfils it with NumPy arrays and
`forge/kernels/` with torch tensors on a GPU. The model (`runtime/model.py`) is written once,
against this contract.

Conventions (see ../shared/ARCHITECTURE.md):
- Activations are 2-D `[num_tokens, features]`, float32 on the CPU (the GPU backend may use
  bf16/fp16 activations; tolerances in tests say how much it may differ). The tokens of all
  sequences of a step are concatenated; `ForwardBatch.query_start_loc` marks where each starts.
- A layer's KV cache is two arrays `[num_blocks, block_size, num_kv_heads, head_dim]` (K and V).
  `slot_mapping[t] = block_id * block_size + offset` is where token t's K/V go.
  `block_tables[b]` lists sequence b's blocks in order (padded with 0, the null block).
- Weights are `QTensor`s: GGML type + logical `(rows, cols)` = (out, in) + backend data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np


@dataclass(slots=True)
class QTensor:
    """A weight matrix in its GGML type.

    `shape` is the logical (rows, cols) = (out_features, in_features); GGUF lists dims the other
    way round (`ne0` = cols). `data` is backend-owned; `layout` names how the backend holds it
    (e.g. "f32" dequantized rows, "raw" GGUF blocks `[rows, bytes_per_row]` uint8, or a repacked
    GPU layout).
    """

    ggml_type: int
    shape: tuple[int, int]
    data: Any
    layout: str = "raw"

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[1]


@dataclass(slots=True)
class RopeSpec:
    """How one layer rotates Q and K.

    style: "norm" rotates adjacent pairs (x[2i], x[2i+1]) (llama.cpp LLAMA_ROPE_TYPE_NORM);
           "neox" rotates halves (x[i], x[i + rot_dim/2]).
    rot_dim: the first `rot_dim` features of each head are rotated; the rest pass through.
    theta_i = pos * freq_scale * base ** (-2i / rot_dim) / freq_factors[i]   (i < rot_dim/2)
    """

    rot_dim: int
    base: float
    style: str = "norm"
    freq_scale: float = 1.0
    freq_factors: Any = None  # backend array [rot_dim // 2] or None


@dataclass(slots=True)
class ForwardBatch:
    """Everything a forward pass needs about the tokens of one step (backend arrays).

    token_ids      [T] int32     ids of the tokens computed this step, sequences concatenated
    positions      [T] int32     absolute position of each token in its sequence
    query_start_loc[B+1] int32   cumulative query lengths; sequence b owns tokens [qsl[b], qsl[b+1])
    seq_lens       [B] int32     context length of each sequence after this step (cached + new)
    block_tables   [B, W] int32  block ids of each sequence in order, padded with 0
    slot_mapping   [T] int64     block_id * block_size + offset where each token's K/V go
    logits_indices [S] int64     rows of the final hidden state whose logits are wanted
    max_query_len, max_seq_len   host ints, for kernel grids
    """

    token_ids: Any
    positions: Any
    query_start_loc: Any
    seq_lens: Any
    block_tables: Any
    slot_mapping: Any
    logits_indices: Any
    max_query_len: int
    max_seq_len: int
    num_seqs: int
    num_tokens: int
    # Host copies (NumPy) of the small index arrays, for backends that plan on the host.
    host: dict = field(default_factory=dict)


@dataclass(slots=True)
class SamplingBatch:
    """Per-row sampling parameters for `sample` (backend arrays, one row per logits row).

    temperature [S] f32 (0 = greedy), top_k [S] i32 (0 = off), top_p [S] f32 (1 = off),
    min_p [S] f32 (0 = off), repetition_penalty [S] f32 (1 = off),
    presence_penalty [S] f32, frequency_penalty [S] f32 (0 = off),
    seeds [S] i64 and steps [S] i64: the random draw of row s depends only on (seeds[s], steps[s]),
    prompt_tokens [S, Lp] i32 and output_tokens [S, Lo] i32, padded with -1.
    Repetition penalty applies to tokens in prompt or output (divide positive logits, multiply
    negative ones); presence/frequency apply to output tokens only (OpenAI / vLLM semantics):
    logit -= presence * (count > 0) + frequency * count.
    Order: penalties -> temperature -> top-k -> top-p -> min-p -> draw.
    want_logprobs: return log-softmax of the penalised logits (before temperature) at the chosen
    token.
    """

    temperature: Any
    top_k: Any
    top_p: Any
    min_p: Any
    repetition_penalty: Any
    presence_penalty: Any
    frequency_penalty: Any
    seeds: Any
    steps: Any
    prompt_tokens: Any
    output_tokens: Any
    all_greedy: bool = False
    want_logprobs: bool = False


class Backend(Protocol):
    """The op contract. Shapes in comments; T tokens, D features, H heads, Dh head dim."""

    name: str
    act_dtype: Any

    # ---- arrays -------------------------------------------------------------------------
    def asarray(self, x: np.ndarray, dtype: Any = None) -> Any: ...
    def to_numpy(self, x: Any) -> np.ndarray: ...
    def synchronize(self) -> None: ...

    # ---- weights and cache -------------------------------------------------------------
    def load_qtensor(self, ggml_type: int, shape: tuple[int, int], raw: np.ndarray) -> QTensor:
        """raw: GGUF bytes of the tensor as uint8 `[rows, bytes_per_row]` (or typed f32/f16 rows)."""

    def alloc_kv(self, num_blocks: int, block_size: int, num_kv_heads: int, k_dim: int,
                 v_dim: int) -> tuple[Any, Any]:
        """One layer's K and V caches, `[num_blocks, block_size, num_kv_heads, k_dim|v_dim]`."""

    # ---- ops ----------------------------------------------------------------------------
    def embed(self, table: QTensor, ids: Any, scale: float | None = None) -> Any:
        """[T] ids -> [T, D] rows of the (dequantized) table, times `scale` if given."""

    def rms_norm(self, x: Any, weight: Any, eps: float, residual: Any = None):
        """y = x / sqrt(mean(x^2) + eps) * weight over the last dim. x: [N, D], weight: [D].

        With `residual` ([N, D]): h = x + residual; returns (rms_norm(h) * weight, h).
        Per-head norm (QK norm) is this op on x viewed as [T * H, Dh].
        """

    def linear(self, x: Any, w: QTensor, bias: Any = None, residual: Any = None) -> Any:
        """[T, w.cols] @ W^T -> [T, w.rows], plus bias [w.rows] if given, plus residual
        [T, w.rows] if given (the residual add after an attention / FFN output projection)."""

    def norm_linear(self, x: Any, weight: Any, eps: float, w: QTensor, bias: Any = None,
                    act: str | None = None) -> Any:
        """`linear(rms_norm(x, weight, eps), w, bias)`; with `act`, W holds [gate; up] (2F rows)
        and the result is `act_mul(y[:, :F], y[:, F:], act)` [T, F]. One op, so that a backend
        may fuse the norm into the matmul's prologue and the activation into its epilogue (the
        GPU backend does in its decode GEMVs)."""

    def rope(self, q: Any, k: Any, v: Any, positions: Any, k_cache: Any, v_cache: Any,
             slot_mapping: Any, spec: RopeSpec, num_heads: int, num_kv_heads: int,
             head_dim: int) -> Any:
        """Rotate q [T, H*Dh] and k [T, Hkv*Dh] by `spec` at `positions` [T]; write the rotated
        k and v [T, Hkv*Dv] into the caches at `slot_mapping`. Returns the rotated q [T, H*Dh]."""

    def attention(self, q: Any, k_cache: Any, v_cache: Any, batch: ForwardBatch, num_heads: int,
                  num_kv_heads: int, scale: float, sliding_window: int | None = None,
                  softcap: float | None = None) -> Any:
        """Paged causal attention with GQA. q: [T, H*Dh] -> out [T, H*Dv].

        Sequence b's queries are its last q_len = qsl[b+1]-qsl[b] tokens; query i sits at position
        p = seq_lens[b] - q_len + i and attends keys at positions j (read from the cache through
        block_tables[b]) with j <= p and, with a sliding window W, p - j < W.
        Scores are q.k * scale, then softcap * tanh(s / softcap) if softcap, then softmax.
        Query head h uses KV head h // (H // Hkv).
        """

    def rope_attention(self, q: Any, k: Any, v: Any, batch: ForwardBatch, k_cache: Any,
                       v_cache: Any, spec: RopeSpec, num_heads: int, num_kv_heads: int,
                       head_dim: int, scale: float, sliding_window: int | None = None,
                       softcap: float | None = None) -> Any:
        """`rope` (at batch.positions, into the caches at batch.slot_mapping) followed by
        `attention` of the rotated q: one op, so that a backend may fuse the two (the GPU
        backend does at decode). Returns the attention output [T, H*Dv]."""

    def logits(self, x: Any, w: QTensor) -> Any:
        """The output head: like `linear`, but the result is always float32."""

    def act_mul(self, gate: Any, up: Any, kind: str) -> Any:
        """kind "silu": silu(gate) * up; "gelu_tanh": gelu_tanh(gate) * up. [T, F] each."""

    def add(self, x: Any, y: Any) -> Any:
        """x + y, same shape."""

    def softcap(self, x: Any, cap: float) -> Any:
        """cap * tanh(x / cap)."""

    def gather_rows(self, x: Any, idx: Any) -> Any:
        """x[idx] for row indices idx [S]."""

    def argmax(self, logits: Any) -> Any:
        """logits [S, V] -> [S] int64 index of each row's maximum (the first one on ties)."""

    def sample(self, logits: Any, sb: SamplingBatch) -> tuple[Any, Any]:
        """logits [S, V] f32 -> (token ids [S] int64, logprobs [S] f32 or None). No host sync."""


def get_backend(device: str = "auto", **kwargs) -> Backend:
    """'cpu' -> the NumPy backend; 'gpu' -> the Triton backend (error if no GPU);
    'auto' -> Triton when torch sees a CUDA/ROCm GPU, else NumPy."""
    device = (device or "auto").lower()
    if device not in ("auto", "cpu", "gpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'gpu', not {device!r}")
    if device in ("gpu", "cuda") or device == "auto":
        from forge.runtime import device as dev

        info = dev.detect()
        if info is not None:
            from forge.kernels.backend import TritonBackend

            return TritonBackend(info, **kwargs)
        if device != "auto":
            raise RuntimeError("device='gpu' was asked for, but torch sees no CUDA or ROCm GPU")
    from forge.cpu.backend import NumpyBackend

    return NumpyBackend(**kwargs)


def check_shape(name: str, x: Any, shape: Sequence[int | None]) -> None:
    """Assert x.shape matches `shape` (None = any); raise ValueError naming the argument."""
    xs = tuple(x.shape)
    if len(xs) != len(shape) or any(s is not None and s != d for s, d in zip(shape, xs)):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {xs}")
