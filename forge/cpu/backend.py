"""NumpyBackend: the op contract of forge/runtime/backend.py on NumPy arrays (float32 activations)."""
from __future__ import annotations

import ctypes
import os

import numpy as np

from forge.cpu import dequant as _dq
from forge.cpu.activation import act_mul as _act_mul
from forge.cpu.attention import attention as _attention
from forge.cpu.embedding import embed as _embed
from forge.cpu.matmul import linear as _linear
from forge.cpu.norm import rms_norm as _rms_norm
from forge.cpu.rope import rope as _rope
from forge.cpu.sampling import sample as _sample
from forge.runtime.backend import ForwardBatch, QTensor, RopeSpec, SamplingBatch

DEFAULT_MAX_F32_BYTES = 4 << 30
WEIGHT_POLICIES = ("auto", "f32", "raw")
KV_DTYPES = {"f32": np.float32, "f16": np.float16}


def set_blas_threads(n: int) -> bool:
    """Ask the OpenBLAS that NumPy loaded to use `n` threads. Returns False if it cannot be found.

    With more BLAS threads than idle cores OpenBLAS spins and can run 10-50x slower, so on a busy
    machine 1 thread is the safe choice.
    """
    names = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
             "openblas_set_num_threads64_", "openblas_set_num_threads")
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return False
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in names:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(int(n))
                return True
    return False


class NumpyBackend:
    """The CPU backend.

    weight_policy: "f32" dequantizes every weight at load; "raw" keeps GGUF blocks and dequantizes
    per call in row chunks; "auto" (default) dequantizes until `max_f32_bytes` (default 4 GiB, env
    FORGE_CPU_MAX_F32_GB in GiB) of float32 weights are held, then keeps the rest raw.
    kv_dtype: "f32" (default) or "f16" for the KV cache.
    blas_threads: threads for OpenBLAS (env FORGE_CPU_THREADS); None leaves it as it is.
    """

    name = "cpu"
    act_dtype = np.float32

    def __init__(self, weight_policy: str = "auto", max_f32_bytes: int | None = None,
                 kv_dtype: str = "f32", blas_threads: int | None = None):
        if weight_policy not in WEIGHT_POLICIES:
            raise ValueError(f"weight_policy: expected one of {WEIGHT_POLICIES}, got {weight_policy!r}")
        if kv_dtype not in KV_DTYPES:
            raise ValueError(f"kv_dtype: expected one of {tuple(KV_DTYPES)}, got {kv_dtype!r}")
        if max_f32_bytes is None:
            env = os.environ.get("FORGE_CPU_MAX_F32_GB")
            if env:
                try:
                    max_f32_bytes = int(float(env) * (1 << 30))
                except ValueError:
                    raise ValueError(f"FORGE_CPU_MAX_F32_GB: expected a number of GiB, got {env!r}") from None
            else:
                max_f32_bytes = DEFAULT_MAX_F32_BYTES
        if max_f32_bytes < 0:
            raise ValueError(f"max_f32_bytes: expected >= 0, got {max_f32_bytes}")
        if blas_threads is None and os.environ.get("FORGE_CPU_THREADS"):
            blas_threads = int(os.environ["FORGE_CPU_THREADS"])
        if blas_threads is not None:
            if blas_threads < 1:
                raise ValueError(f"blas_threads: expected >= 1, got {blas_threads}")
            set_blas_threads(blas_threads)
        self.weight_policy = weight_policy
        self.max_f32_bytes = int(max_f32_bytes)
        self.f32_bytes = 0          # float32 weight bytes held so far (dequantized copies)
        self.kv_dtype = KV_DTYPES[kv_dtype]

    # ---- arrays -------------------------------------------------------------------------
    def asarray(self, x, dtype=None) -> np.ndarray:
        return np.asarray(x, dtype=dtype)

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def synchronize(self) -> None:
        return None

    # ---- weights and cache -------------------------------------------------------------
    def load_qtensor(self, ggml_type: int, shape: tuple[int, int], raw: np.ndarray) -> QTensor:
        policy = self.weight_policy
        rows, cols = (int(s) for s in shape) if len(tuple(shape)) == 2 else (0, 0)
        need = rows * cols * 4
        is_f32 = int(ggml_type) == int(_dq.GGMLQuantizationType.F32)
        if policy == "auto":
            policy = "f32" if is_f32 or self.f32_bytes + need <= self.max_f32_bytes else "raw"
        qt = _dq.load_qtensor(ggml_type, shape, raw, policy=policy)
        if qt.layout == "f32" and not is_f32:
            self.f32_bytes += need
        return qt

    def dequantize(self, qt: QTensor) -> np.ndarray:
        """The whole weight as float32 [rows, cols] (a view for the "f32" layout)."""
        return _dq.dequantize(qt)

    def fuse_rows(self, mats: list[QTensor]) -> QTensor:
        """One QTensor holding the rows of `mats` in order (e.g. Wq|Wk|Wv, so one BLAS call does
        all three). Each input is then re-pointed at its slice of the fused rows, so the fused
        weight costs no extra memory. All must share ggml_type, cols and layout."""
        if not mats:
            raise ValueError("mats: expected at least one QTensor")
        key = {(m.ggml_type, m.cols, m.layout) for m in mats}
        if len(key) != 1:
            raise ValueError(f"mats: ggml_type, cols and layout must match, got {sorted(key)}")
        data = np.concatenate([m.data for m in mats], axis=0)
        r0 = 0
        for m in mats:
            m.data = data[r0:r0 + m.rows]
            r0 += m.rows
        return QTensor(mats[0].ggml_type, (r0, mats[0].cols), data, mats[0].layout)

    def concat(self, arrays) -> np.ndarray:
        """1-D arrays (biases) end to end."""
        return np.concatenate([np.asarray(a) for a in arrays])

    def alloc_kv(self, num_blocks: int, block_size: int, num_kv_heads: int, k_dim: int,
                 v_dim: int) -> tuple[np.ndarray, np.ndarray]:
        for name, val in (("num_blocks", num_blocks), ("block_size", block_size),
                          ("num_kv_heads", num_kv_heads), ("k_dim", k_dim), ("v_dim", v_dim)):
            if int(val) <= 0:
                raise ValueError(f"{name}: expected > 0, got {val}")
        k = np.zeros((num_blocks, block_size, num_kv_heads, k_dim), self.kv_dtype)
        v = np.zeros((num_blocks, block_size, num_kv_heads, v_dim), self.kv_dtype)
        return k, v

    # ---- ops ----------------------------------------------------------------------------
    def embed(self, table: QTensor, ids, scale: float | None = None) -> np.ndarray:
        return _embed(table, ids, scale)

    def rms_norm(self, x, weight, eps: float, residual=None):
        return _rms_norm(x, weight, eps, residual)

    def linear(self, x, w: QTensor, bias=None) -> np.ndarray:
        return _linear(x, w, bias)

    def rope(self, q, k, v, positions, k_cache, v_cache, slot_mapping, spec: RopeSpec,
             num_heads: int, num_kv_heads: int, head_dim: int) -> np.ndarray:
        return _rope(q, k, v, positions, k_cache, v_cache, slot_mapping, spec, num_heads,
                     num_kv_heads, head_dim)

    def attention(self, q, k_cache, v_cache, batch: ForwardBatch, num_heads: int,
                  num_kv_heads: int, scale: float, sliding_window: int | None = None,
                  softcap: float | None = None) -> np.ndarray:
        return _attention(q, k_cache, v_cache, batch.query_start_loc, batch.seq_lens,
                          batch.block_tables, num_heads, num_kv_heads, scale, sliding_window, softcap)

    def logits(self, x, w: QTensor) -> np.ndarray:
        """The output head (float32, like every CPU activation)."""
        return self.linear(x, w)

    def act_mul(self, gate, up, kind: str) -> np.ndarray:
        return _act_mul(gate, up, kind)

    def add(self, x, y) -> np.ndarray:
        if x.shape != y.shape:
            raise ValueError(f"y: expected shape {tuple(x.shape)}, got {tuple(y.shape)}")
        return np.add(x, y)

    def softcap(self, x, cap: float) -> np.ndarray:
        if not cap > 0:
            raise ValueError(f"cap: expected > 0, got {cap}")
        y = np.multiply(x, np.float32(1.0 / cap), dtype=np.float32)
        np.tanh(y, out=y)
        y *= np.float32(cap)
        return y

    def gather_rows(self, x, idx) -> np.ndarray:
        return np.take(x, np.asarray(idx), axis=0)

    def sample(self, logits, sb: SamplingBatch):
        return _sample(logits, sb)
