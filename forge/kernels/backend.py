"""TritonBackend: the op contract of forge/runtime/backend.py on torch tensors on a GPU
(CUDA, or HIP on a ROCm build of torch), every op a Triton kernel from this package.

Weights are uploaded once in their GGUF types and repacked (`dequant.repack`); activations and
the KV cache are bf16 by default (`act_dtype="f16"` or `"f32"` to change). The KV cache is sized
from the memory left after the weights (`kv_cache_budget_bytes`).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np
import torch

from forge.kernels import (activation, attention, dequant, embedding, matmul, norm, precompile, rope,
                           sampling)
from forge.runtime.backend import ForwardBatch, QTensor, RopeSpec, SamplingBatch

_ACT = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
_NP_TO_TORCH = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
                np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64,
                np.dtype(np.uint8): torch.uint8, np.dtype(np.bool_): torch.bool}


class TritonBackend:
    """act_dtype: "bf16" (default), "f16" or "f32" for activations and the KV cache.
    gpu_memory_utilization: fraction of the device memory forge may use in all (weights,
    activations, KV cache); the KV cache gets what remains after the weights and an activation
    reserve. cuda_graphs: capture decode as CUDA/HIP graphs (default True). prefill_graphs:
    also replay prefill and mixed steps from graphs, one per padded size, captured on first use
    (default True; needs cuda_graphs; see runtime/graphs.py PrefillGraphs)."""

    name = "gpu"

    def __init__(self, info, act_dtype: str = "bf16", gpu_memory_utilization: float = 0.9,
                 cuda_graphs: bool = True, prefill_graphs: bool = True, device_index: int = 0):
        if act_dtype not in _ACT:
            raise ValueError(f"act_dtype: expected one of {tuple(_ACT)}, got {act_dtype!r}")
        if not 0.05 <= gpu_memory_utilization <= 0.99:
            raise ValueError(f"gpu_memory_utilization must be in [0.05, 0.99], got {gpu_memory_utilization}")
        self.info = info
        self.device = torch.device("cuda", device_index)
        torch.cuda.set_device(self.device)
        self.act_dtype = _ACT[act_dtype]
        self.kv_bytes_per_elem = torch.empty((), dtype=self.act_dtype).element_size()
        self.gpu_memory_utilization = gpu_memory_utilization
        self.cuda_graphs = cuda_graphs
        self.prefill_graphs = bool(cuda_graphs and prefill_graphs)
        self.weight_bytes = 0
        self.converted_types: dict[int, int] = {}  # GGML type -> tensors dequantized to F32 at load
        # bytes of int8-path weights per GEMV chunking (V, E): see `xq_chunking`
        self._chunk_bytes: dict[tuple[int, int], int] = {}
        self._xq: tuple[int, int] | None | bool = False     # False: not decided yet

    # ---- arrays -------------------------------------------------------------------------
    def asarray(self, x, dtype=None) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            t = x.to(self.device)
        else:
            a = np.asarray(x)
            if dtype is not None:
                a = a.astype(dtype)
            if a.dtype == np.float64:
                a = a.astype(np.float32)
            if not a.flags.writeable or not a.flags.c_contiguous:
                a = np.array(a, copy=True, order="C")
            t = torch.from_numpy(a).to(self.device, non_blocking=False)
        return t

    def to_numpy(self, x) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            if x.dtype in (torch.bfloat16, torch.float16):
                x = x.float()
            return x.detach().cpu().numpy()
        return np.asarray(x)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    # ---- weights and cache -------------------------------------------------------------
    def load_qtensor(self, ggml_type: int, shape: tuple[int, int], raw: np.ndarray) -> QTensor:
        rows, cols = int(shape[0]), int(shape[1])
        if int(ggml_type) not in dequant.TYPES:
            # A GGML type the GPU kernels do not decode (the IQ* family; llama.cpp's quantizer
            # also falls back to IQ4_NL for K-quant tensors whose rows are not a multiple of
            # 256): dequantize on the host once, exactly as the CPU backend does, and keep it
            # as F32 on the device (4 bytes per weight for these tensors only).
            from forge.cpu import dequant as cpu_dq

            if not cpu_dq.is_supported(int(ggml_type)):
                raise ValueError(f"ggml_type: GGML type {int(ggml_type)} is not supported")
            raw_rows = np.asarray(raw).view(np.uint8).reshape(rows, -1)
            f32 = cpu_dq.dequantize_bytes(raw_rows, int(ggml_type), cols)
            self.converted_types[int(ggml_type)] = self.converted_types.get(int(ggml_type), 0) + 1
            ggml_type, raw = dequant.TYPE_IDS["F32"], f32.view(np.uint8)
        host = torch.from_numpy(np.array(raw, copy=True).view(np.uint8).reshape(rows, -1))
        qt = dequant.repack(int(ggml_type), (rows, cols), host.to(self.device))
        nbytes = sum(t.numel() * t.element_size() for t in qt.data.values())
        self.weight_bytes += nbytes
        if dequant.TYPES[int(ggml_type)].name in matmul.INT8_TYPES:
            key = matmul.gemv_shape(int(ggml_type))
            self._chunk_bytes[key] = self._chunk_bytes.get(key, 0) + nbytes
            self._xq = False
        return qt

    @property
    def xq_chunking(self) -> tuple[int, int] | None:
        """The chunking (V, E) in which rms_norm, act_mul and decode attention quantize their
        outputs for the GEMVs' X_PRE path (xquant.py), saving those GEMVs a quantize launch: that of
        the int8-path weight types holding the most bytes (Q4_K_M: Q4_K and Q6_K, both 4 x 8).
        None where nothing reads it: no such weights, float32 activations, AMD (no X_INT8),
        or FORGE_XQ_FUSE=0. A GEMV whose config has X_PRE off or whose chunking differs just
        quantizes for itself, as before."""
        if self._xq is False:
            on = os.environ.get("FORGE_XQ_FUSE", "1") not in ("0", "")
            ok = on and self._chunk_bytes and torch.version.hip is None \
                and self.act_dtype != torch.float32
            self._xq = max(self._chunk_bytes, key=self._chunk_bytes.get) if ok else None
        return self._xq

    def fuse_rows(self, mats: list[QTensor]) -> QTensor | None:
        """One weight with the rows of `mats` stacked; the inputs become views into it."""
        first = mats[0]
        if any(m.layout != first.layout or m.ggml_type != first.ggml_type or m.cols != first.cols
               or set(m.data) != set(first.data)
               or any(m.data[p].shape[1] != first.data[p].shape[1] for p in m.data) for m in mats):
            return None
        planes = {p: torch.cat([m.data[p] for m in mats], dim=0) for p in first.data}
        r0 = 0
        for m in mats:  # re-point the parts at the fused storage: no extra memory
            m.data = {p: planes[p][r0:r0 + m.rows] for p in planes}
            r0 += m.rows
        return QTensor(first.ggml_type, (r0, first.cols), planes, first.layout)

    def concat(self, xs: list[Any]) -> torch.Tensor:
        return torch.cat(list(xs), dim=0)

    def alloc_kv(self, num_blocks: int, block_size: int, num_kv_heads: int, k_dim: int,
                 v_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = torch.zeros((num_blocks, block_size, num_kv_heads, k_dim), dtype=self.act_dtype, device=self.device)
        v = torch.zeros((num_blocks, block_size, num_kv_heads, v_dim), dtype=self.act_dtype, device=self.device)
        return k, v

    def kv_cache_budget_bytes(self, engine) -> int:
        """Device memory for the KV cache: the share of total memory forge may use, less what
        is allocated now (weights) and a reserve for activations of the largest step."""
        # give back what this process's allocator caches unused (an engine dropped before this
        # one): else it counts as used by others (run 27: a second engine got 16 tokens)
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        used_by_others = total - free - torch.cuda.memory_allocated(self.device)
        cfg = engine.cfg
        tokens = engine.max_num_batched_tokens
        width = max(cfg.hidden_size, cfg.num_heads * cfg.head_dim, 2 * cfg.intermediate_size)
        act_bytes = tokens * width * 4 * 6 + engine.max_num_seqs * cfg.vocab_size * 4 * 4
        allowed = int(total * self.gpu_memory_utilization) - used_by_others \
            - torch.cuda.memory_allocated(self.device) - act_bytes - (512 << 20)
        return max(allowed, 0)

    # ---- ops ----------------------------------------------------------------------------
    def embed(self, table: QTensor, ids, scale: float | None = None) -> torch.Tensor:
        return embedding.embed(table, ids, scale, dtype=self.act_dtype)

    def rms_norm(self, x, weight, eps: float, residual=None):
        return norm.rms_norm(x, weight, eps, residual, xq=self.xq_chunking)

    def linear(self, x, w: QTensor, bias=None, residual=None) -> torch.Tensor:
        """With a residual, decode GEMVs add it in their epilogue (matmul.linear)."""
        return matmul.linear(x, w, bias, residual=residual)

    def norm_linear(self, x, weight, eps: float, w: QTensor, bias=None, act: str | None = None):
        """Decode GEMVs that read x as it is (float weights; quantized ones where x is not
        pre-quantized) run the rms_norm in their prologue and the gated activation in their
        epilogue (matmul.linear): one launch for rms_norm + linear (+ act_mul)."""
        return matmul.linear(x, w, bias, norm=(weight, eps), act=act, xq=self.xq_chunking)

    def rope(self, q, k, v, positions, k_cache, v_cache, slot_mapping, spec: RopeSpec,
             num_heads: int, num_kv_heads: int, head_dim: int) -> torch.Tensor:
        return rope.rope(q, k, v, positions, k_cache, v_cache, slot_mapping, spec, num_heads,
                         num_kv_heads, head_dim)

    def attention(self, q, k_cache, v_cache, batch: ForwardBatch, num_heads: int,
                  num_kv_heads: int, scale: float, sliding_window: int | None = None,
                  softcap: float | None = None) -> torch.Tensor:
        return attention.attention(q, k_cache, v_cache, batch.query_start_loc, batch.seq_lens,
                                   batch.block_tables, num_heads, num_kv_heads, scale,
                                   sliding_window, softcap, max_query_len=batch.max_query_len,
                                   max_seq_len=batch.max_seq_len, xq=self.xq_chunking)

    def rope_attention(self, q, k, v, batch: ForwardBatch, k_cache, v_cache, spec: RopeSpec,
                       num_heads: int, num_kv_heads: int, head_dim: int, scale: float,
                       sliding_window: int | None = None,
                       softcap: float | None = None) -> torch.Tensor:
        """At decode the attention kernel applies the rope itself (attention.py, "Rope fused
        into decode"): one launch per layer instead of two."""
        f = rope.fused_args(q, k, v, batch.positions, k_cache, v_cache, batch.slot_mapping, spec,
                            num_heads, num_kv_heads, head_dim)
        return attention.attention(q, k_cache, v_cache, batch.query_start_loc, batch.seq_lens,
                                   batch.block_tables, num_heads, num_kv_heads, scale,
                                   sliding_window, softcap, max_query_len=batch.max_query_len,
                                   max_seq_len=batch.max_seq_len, xq=self.xq_chunking, rope=f)

    def logits(self, x, w: QTensor) -> torch.Tensor:
        """The output head with float32 logits. Decode rows (a GEMV) read the f16/bf16 hidden
        state as it is (on NVIDIA, quantized types: int8 per 32-column chunk, as llama.cpp's
        CUDA MMVQ does; half the time of the exact float32 decode at 128256 x 4096 Q6_K), more
        rows and float32 activations compute from x in float32."""
        out = torch.empty((x.shape[0], w.rows), dtype=torch.float32, device=x.device)
        return matmul.linear(x, w, out=out)

    def act_mul(self, gate, up, kind: str) -> torch.Tensor:
        return activation.act_mul(gate, up, kind, xq=self.xq_chunking)

    def add(self, x, y) -> torch.Tensor:
        return x + y

    def softcap(self, x, cap: float) -> torch.Tensor:
        return torch.tanh(x.float() / cap) * cap

    def gather_rows(self, x, idx) -> torch.Tensor:
        return x.index_select(0, idx)

    def argmax(self, logits, out=None) -> torch.Tensor:
        return sampling.argmax(logits, out=out)

    def sample(self, logits, sb: SamplingBatch):
        return sampling.sample(logits.float(), sb)

    # ---- compiling ----------------------------------------------------------------------
    def compile_ahead(self, progress: bool = False):
        """A context inside which this thread's kernel launches only compile, on many threads
        (kernels/precompile.py; the engine's warm-up runs its steps dry inside it first); None
        where that cannot be done (FORGE_COMPILE_THREADS 0 or 1, a Triton without it)."""
        n = precompile.workers()
        if n <= 1 or not precompile.supported():
            return None
        return precompile.ahead(n, progress)

    def warm_mark(self, parts):
        """The mark (a path) a complete warm-up of `parts` leaves in Triton's cache; while it
        exists, the warm-up need not compile ahead (precompile.marker)."""
        return precompile.marker(parts, self.device)

    # ---- measurement --------------------------------------------------------------------
    def copy_bandwidth(self, nbytes: int = 1 << 30) -> float:
        """Device-to-device copy bandwidth in bytes/s, counting bytes read plus written."""
        a = torch.empty(nbytes // 2, dtype=torch.uint8, device=self.device)
        b = torch.empty_like(a)
        for _ in range(3):
            b.copy_(a)
        torch.cuda.synchronize(self.device)
        times = []
        for _ in range(10):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            b.copy_(a)
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        del a, b
        return 2 * (nbytes // 2) / float(np.median(times))


def log(msg: str) -> None:
    print(f"forge: {msg}", file=sys.stderr)


__all__ = ["TritonBackend"]
_ = time
