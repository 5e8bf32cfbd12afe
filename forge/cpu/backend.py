"""NumpyBackend: the op contract of forge/runtime/backend.py on NumPy arrays (float32 activations)."""
from __future__ import annotations

import ctypes
import os

import numpy as np

from forge.cpu import dequant as _dq
from forge.cpu import llamacpp as _lc
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
NUMERICS = ("llamacpp", "f32")


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
    numerics: "f32" (default; env FORGE_CPU_NUMERICS) is plain float32 math: the ops of
    forge/cpu/<op>.py that the float64-reference tests check, at BLAS speed. "llamacpp" computes
    as llama.cpp's CPU backend does, bit for bit where forge/cpu/llamacpp.py knows the kernel
    (activations quantized before every matmul, ggml's accumulation orders, RoPE tables, softmax,
    SiLU/GELU), so greedy output follows llama.cpp token for token; it is 3-5x slower, so it is
    the mode for verifying against llama.cpp, not the default. Quantized weights are repacked for
    the exact kernels on first use (their float32 copy is then dropped); an F16 KV cache is not
    emulated (its attention runs as with "f32").
    """

    name = "cpu"
    act_dtype = np.float32

    def __init__(self, weight_policy: str = "auto", max_f32_bytes: int | None = None,
                 kv_dtype: str = "f32", blas_threads: int | None = None,
                 numerics: str | None = None):
        if weight_policy not in WEIGHT_POLICIES:
            raise ValueError(f"weight_policy: expected one of {WEIGHT_POLICIES}, got {weight_policy!r}")
        if kv_dtype not in KV_DTYPES:
            raise ValueError(f"kv_dtype: expected one of {tuple(KV_DTYPES)}, got {kv_dtype!r}")
        if numerics is None:
            numerics = os.environ.get("FORGE_CPU_NUMERICS") or "f32"
        if numerics not in NUMERICS:
            raise ValueError(f"numerics: expected one of {NUMERICS}, got {numerics!r}")
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
        self.numerics = numerics
        # numerics="llamacpp" bookkeeping, by id of a QTensor (each entry keeps the QTensor so that
        # its id cannot be reused): the GGUF bytes of weights held as float32, the parts of fused
        # weights, and the packed form (or None) of weights already used by `linear`.
        self._raw: dict[int, tuple[QTensor, np.ndarray]] = {}
        self._parts: dict[int, tuple[QTensor, list[QTensor]]] = {}
        self._packed: dict[int, tuple[QTensor, object]] = {}    # Packed, [(part, Packed)] or None
        self._mins: dict[int, tuple[QTensor, np.ndarray | None]] = {}
        self._rope_tables = _lc.RopeCache()

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
        if self.numerics == "llamacpp" and qt.layout == "f32" and not is_f32:
            self._raw[id(qt)] = (qt, np.asarray(raw))
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
        fused = QTensor(mats[0].ggml_type, (r0, mats[0].cols), data, mats[0].layout)
        if self.numerics == "llamacpp":
            self._parts[id(fused)] = (fused, list(mats))
        return fused

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
        if self.numerics == "llamacpp":
            return _lc.rms_norm(x, weight, eps, residual)
        return _rms_norm(x, weight, eps, residual)

    def linear(self, x, w: QTensor, bias=None, residual=None) -> np.ndarray:
        y = self._linear(x, w, bias)
        if residual is None:
            return y
        if residual.shape != y.shape:
            raise ValueError(f"residual: expected shape {tuple(y.shape)}, got {tuple(residual.shape)}")
        return np.add(y, residual, dtype=np.float32)

    def norm_linear(self, x, weight, eps: float, w: QTensor, bias=None, act: str | None = None):
        y = self._linear(self.rms_norm(x, weight, eps), w, bias)
        if act is None:
            return y
        if w.rows % 2:
            raise ValueError(f"act: the weight must hold [gate; up] (an even number of rows), "
                             f"got {w.rows} rows")
        f = w.rows // 2
        return self.act_mul(y[:, :f], y[:, f:], act)

    def _linear(self, x, w: QTensor, bias=None) -> np.ndarray:
        if self.numerics == "llamacpp":
            packed = self._packed_of(w)
            if isinstance(packed, list):
                if bias is not None and bias.shape != (w.rows,):
                    raise ValueError(f"bias: expected shape ({w.rows},), got {tuple(bias.shape)}")
                y = np.concatenate([_lc.linear_exact(x, m, p) for m, p in packed], axis=1)
                return y + bias if bias is not None else y
            if packed is not None:
                return _lc.linear_exact(x, w, packed, bias)
            return _lc.linear_fast(x, w, bias, self._mins_of(w))
        return _linear(x, w, bias)

    def rope(self, q, k, v, positions, k_cache, v_cache, slot_mapping, spec: RopeSpec,
             num_heads: int, num_kv_heads: int, head_dim: int) -> np.ndarray:
        if self.numerics == "llamacpp" and k_cache.dtype == np.float32:
            return _lc.rope(q, k, v, positions, k_cache, v_cache, slot_mapping, spec, num_heads,
                            num_kv_heads, head_dim, self._rope_tables)
        return _rope(q, k, v, positions, k_cache, v_cache, slot_mapping, spec, num_heads,
                     num_kv_heads, head_dim)

    def attention(self, q, k_cache, v_cache, batch: ForwardBatch, num_heads: int,
                  num_kv_heads: int, scale: float, sliding_window: int | None = None,
                  softcap: float | None = None) -> np.ndarray:
        fn = _attention
        if self.numerics == "llamacpp" and k_cache.dtype == np.float32 and v_cache.dtype == np.float32:
            fn = _lc.attention
        return fn(q, k_cache, v_cache, batch.query_start_loc, batch.seq_lens, batch.block_tables,
                  num_heads, num_kv_heads, scale, sliding_window, softcap)

    def rope_attention(self, q, k, v, batch: ForwardBatch, k_cache, v_cache, spec: RopeSpec,
                       num_heads: int, num_kv_heads: int, head_dim: int, scale: float,
                       sliding_window: int | None = None, softcap: float | None = None) -> np.ndarray:
        q = self.rope(q, k, v, batch.positions, k_cache, v_cache, batch.slot_mapping, spec,
                      num_heads, num_kv_heads, head_dim)
        return self.attention(q, k_cache, v_cache, batch, num_heads, num_kv_heads, scale,
                              sliding_window, softcap)

    def logits(self, x, w: QTensor) -> np.ndarray:
        """The output head (float32, like every CPU activation). With numerics="llamacpp" the
        activation is rounded as llama.cpp does, then float32 BLAS: the logits are never quantized
        again, so this matches llama.cpp to ~1e-6 at a fraction of the bit-exact kernel's cost."""
        if self.numerics == "llamacpp":
            return _lc.linear_fast(x, w, None, self._mins_of(w))
        return _linear(x, w)

    # ---- numerics="llamacpp": packed weights ---------------------------------------------
    def _raw_rows(self, w: QTensor) -> np.ndarray | None:
        """The GGUF bytes of `w` ([rows, bytes_per_row] uint8), or None if not known."""
        if w.layout == "raw":
            return w.data
        entry = self._raw.get(id(w))
        if entry is not None:
            return _dq._as_rows(entry[1], w.rows, _dq.row_bytes(w.ggml_type, w.cols))
        parts = self._parts.get(id(w))
        if parts is not None:
            rows = [self._raw_rows(m) for m in parts[1]]
            if all(r is not None for r in rows):
                return np.concatenate(rows, axis=0)
        return None

    def _packed_of(self, w: QTensor):
        """The packed form of `w` for the bit-exact kernels (built on first use), or None."""
        entry = self._packed.get(id(w))
        if entry is None:
            packed = None
            if int(w.ggml_type) in _lc.EXACT_TYPES:
                parts = self._parts.get(id(w), (None, [w]))[1]
                raws = [self._raw_rows(m) for m in parts]
                if all(r is not None for r in raws):
                    # pack part by part: ggml picks a kernel per matrix (repacked Q4_K needs
                    # rows % 8 == 0), so fuse only parts that share one
                    pk = [_lc.pack(m.ggml_type, r, m.rows, m.cols) for m, r in zip(parts, raws)]
                    if len({_lc.fusable_key(p) for p in pk}) == 1:
                        packed = pk[0] if len(pk) == 1 else _lc.concat_packed(pk)
                    else:
                        packed = list(zip(parts, pk))      # computed part by part
                    self._drop_f32(w, np.concatenate(raws) if len(raws) > 1 else raws[0])
            entry = self._packed[id(w)] = (w, packed)
        return entry[1]

    def _drop_f32(self, w: QTensor, raw: np.ndarray) -> None:
        """Once packed, hold `w` as its GGUF bytes instead of float32; the parts of a fused `w`
        are re-pointed at their rows of those bytes (as fuse_rows does with float32 rows)."""
        if w.layout != "f32":
            return
        parts = self._parts.get(id(w), (None, []))[1]
        r0 = 0
        for m in parts:
            if m.layout == "f32":
                self.f32_bytes -= m.rows * m.cols * 4
            m.data, m.layout = raw[r0:r0 + m.rows], "raw"
            r0 += m.rows
        if not parts:
            self.f32_bytes -= w.rows * w.cols * 4
        w.data, w.layout = raw, "raw"

    def _mins_of(self, w: QTensor) -> np.ndarray | None:
        if int(w.ggml_type) not in _lc.Q8_1_USERS:
            return None
        entry = self._mins.get(id(w))
        if entry is None:
            raw = self._raw_rows(w)
            if raw is None:
                raise ValueError(f"w: the GGUF bytes of this {w.ggml_type} weight are unknown to the "
                                 "backend (load it with load_qtensor)")
            entry = self._mins[id(w)] = (w, _lc.block_mins(w.ggml_type, raw, w.rows, w.cols))
        return entry[1]

    def act_mul(self, gate, up, kind: str) -> np.ndarray:
        if self.numerics == "llamacpp":
            return _lc.act_mul(gate, up, kind)
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

    def argmax(self, logits) -> np.ndarray:
        return np.argmax(logits, axis=-1).astype(np.int64)

    def sample(self, logits, sb: SamplingBatch):
        return _sample(logits, sb)
