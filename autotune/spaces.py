"""Search spaces for autotune.sweep: per kernel, the candidate launch configs for a GPU family,
and the problems (representative shapes) they are timed on.

A space is a grid of key -> values, expanded and then filtered by rules that need no GPU
(power-of-two blocks, the LDS/shared-memory budget, warps that a wave64 CU can hold). Problems
build real inputs on the GPU and return a closure that runs the public op once; a problem
names the bucket dims its launcher will use, so the winning config lands under that bucket.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

# GGML types the sweeps cover for the linear/dequant kernels (the common GGUF choices).
SWEEP_TYPES = ("Q4_K", "Q6_K", "Q8_0", "Q4_0", "Q5_K")
# f16 fields in each GGML block (byte offsets), set to sane scales in synthetic weights.
_F16_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
               "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def _grid(**axes) -> list[dict]:
    keys = list(axes)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(axes[k] for k in keys))]


def _is_amd(family: str) -> bool:
    return family.startswith(("cdna", "rdna", "gcn"))


def _stages(family: str, big: bool = False) -> tuple[int, ...]:
    """AMD's stream pipeliner wants 1-2 stages (LDS is 64 KiB); NVIDIA async copies like 2-4."""
    if _is_amd(family):
        return (1, 2)
    if family in ("hopper", "blackwell"):
        return (2, 3, 4) if big else (1, 2, 3)
    return (2, 3) if big else (1, 2)


def _warps(family: str, small: bool = False) -> tuple[int, ...]:
    if family.startswith(("cdna", "gcn")):  # wave64: 4 warps = 256 lanes already
        return (1, 2, 4) if small else (2, 4, 8)
    return (1, 2, 4, 8) if small else (2, 4, 8)


def _amd_mma(family: str) -> dict:
    if family.startswith("cdna"):
        return {"matrix_instr_nonkdim": (16, 32), "kpack": (1, 2), "waves_per_eu": (0, 2)}
    if family.startswith("rdna"):
        return {"waves_per_eu": (0, 2)}
    return {}


def space(kernel: str, family: str, *, sub: int = 1, lds_bytes: int = 64 * 1024,
          elem: int = 2, warp: int | None = None, int8: bool = False,
          gemv_stages: tuple[int, ...] = (1,), gemv_prefetch: tuple[int, ...] | None = None,
          gemv_x_pre: tuple[int, ...] | None = None,
          gemv_l2pf: tuple[int, ...] | None = None,
          gemv_async: tuple[int, ...] | None = None) -> list[dict]:
    """Candidate configs for `kernel` ("linear_gemv", ...) on `family` ("cdna3", "hopper", ...).

    A candidate holds only the keys the space varies; autotune.sweep lays each over the entry
    the tables give the problem now, so the keys a space does not vary (PDL, FUSE_NORM, ...)
    keep their current values.

    sub: the GGML type's sub-block (BLOCK_S counts sub-blocks; for linear_gemv, the columns one
    thread takes per step, matmul.gemv_block); elem: activation bytes; warp: the wave size;
    int8: the GEMV of this type can take int8 activations (matmul.INT8_TYPES; NVIDIA only);
    gemv_stages: num_stages values to try for the NVIDIA GEMV. The GEMV's K loop has no tl.dot,
    and Triton's software pipeliner takes a dot-less loop only when the loop carries its own
    num_stages (tl.range), so the kernel-wide value compiles to the same sm90 SASS for 1, 2
    and 3 (checked in session 14): the axis re-times one kernel. The loop-level form was
    measured 1.03-2.6x slower than the shipped GEMV (bench/results/run18) and is not built in.
    gemv_prefetch: PREFETCH values to try for the NVIDIA GEMV (the kernel's own software
    pipelining: 0 off, 1 the next step's weight loads before each decode, behind a fence, 2 the
    same left to ptxas, 4 and 3 the same two steps per loop iteration; see matmul.py); None: not
    an axis (the current value is kept).
    gemv_x_pre: X_PRE values to try for an int8 GEMV (1: x quantized by a kernel before the
    GEMV; the timed rotations share one x, so one quantization serves them all (xquant's
    reuse), as the producing norm / act_mul / attention's codes do in a model: the times are
    the GEMV's); None: not an axis.
    gemv_l2pf: L2PF values to try for the NVIDIA GEMV (the weights prefetched into L2 that many
    steps ahead, 0 off; see matmul.py); None: not an axis.
    gemv_async: ring slots (ASYNC) to try for the shared-memory GEMV (kernels/gemv_async.py;
    pass it only for a type that has one): each adds candidates over ASYNC_BN 2 / 4 / 8 and
    ASYNC_WARPS 1 / 2 / 4 (x through the ring, int8 x quantized first, no K split); the
    sweep drops those a problem's shape cannot take (`gemv_async.eligible`). None or 0: none.
    """
    amd = _is_amd(family)
    warp = warp or (64 if family.startswith(("cdna", "gcn")) else 32)
    if kernel == "linear_gemv":
        # matmul.py's GEMV: one chunk of `sub` columns per thread and step, BLOCK_K = sub x
        # lanes x warps; vary rows per program, warps and the K split (num_stages is unused).
        # NVIDIA's int8-activation path (dp4a) halves the instructions per weight and was faster
        # than the exact float decode at every Llama-3-8B shape on H100 (bench_matmul, run 6),
        # so a quantized type is swept with it on.
        if amd:
            cands = _grid(BLOCK_N=(1, 2, 4, 8), num_warps=_warps(family, small=True),
                          SPLIT_K=(1, 2, 4, 8), num_stages=(1,))
        else:
            extra = {}
            if gemv_prefetch is not None:
                extra["PREFETCH"] = tuple(gemv_prefetch)
            if gemv_x_pre is not None and int8:
                extra["X_PRE"] = tuple(gemv_x_pre)
            if gemv_l2pf is not None:
                extra["L2PF"] = tuple(gemv_l2pf)
            # ASYNC 0: the candidates are matmul.py's GEMV. A bucket whose entry sets ASYNC (the
            # shared-memory Q4_K / Q8_0 GEMV, kernels/gemv_async.py) is timed with it as the baseline,
            # so it keeps it unless a Triton GEMV config beats it (and is then written with
            # ASYNC 0); with ASYNC kept, every candidate would time the same async kernel.
            cands = _grid(BLOCK_N=(1, 2, 4, 8), num_warps=(1, 2, 4), SPLIT_K=(1, 2, 4),
                          num_stages=tuple(gemv_stages), X_INT8=(1,) if int8 else (0,),
                          ASYNC=(0,), **extra)
        for c in cands:
            c["BLOCK_K"] = sub * warp * c["num_warps"]
        if gemv_async and not amd and int8:
            # the shared-memory GEMV's own program shape; the Triton keys stay as they are
            cands += _grid(ASYNC=tuple(v for v in gemv_async if v), ASYNC_BN=(2, 4, 8),
                           ASYNC_WARPS=(1, 2, 4), ASYNC_XA=(1,), X_INT8=(1,), X_PRE=(1,),
                           SPLIT_K=(1,))
        return cands
    if kernel == "linear_kq":
        # kgemm.py's GEMM on scaled integer codes (Q4_K / Q6_K, T <= 64): BLOCK_M follows T (each
        # problem fixes it: Problem.extra["fixed"]); vary the weight rows per program, warps,
        # stages, K split.
        if amd:
            raise ValueError("kernel: linear_kq runs on NVIDIA only (kgemm builds its operands "
                             "with PTX)")
        return _grid(BLOCK_N=(64, 128), num_warps=(4, 8), num_stages=(2, 3), SPLIT_K=(1, 2, 4, 8))
    if kernel == "linear_gemm":
        mma = _amd_mma(family) if amd else {}
        cands = _grid(BLOCK_M=(32, 64, 128), BLOCK_N=(32, 64, 128), KT=(32, 64, 128),
                      GROUP_M=(8,), num_warps=(4, 8), num_stages=_stages(family, big=True),
                      **{k: v for k, v in mma.items()})
        out = []
        for c in cands:
            if c["KT"] < sub:
                continue
            smem = (c["BLOCK_M"] + c["BLOCK_N"]) * c["KT"] * elem * max(1, c["num_stages"])
            if smem > lds_bytes or (c["num_warps"] == 8 and c["BLOCK_M"] * c["BLOCK_N"] < 64 * 64):
                continue
            if c.get("matrix_instr_nonkdim") == 32 and min(c["BLOCK_M"], c["BLOCK_N"]) < 32:
                continue
            out.append(_ktile(c, sub))
        return out
    if kernel == "dequant":
        cands = _grid(BLOCK_N=(8, 16, 32), KT=(256, 512, 1024), num_warps=_warps(family, small=True),
                      num_stages=(1,))
        return [_ktile(c, sub) for c in cands if c["KT"] >= sub and c["BLOCK_N"] * c["KT"] <= 16384]
    if kernel == "attn_prefill":
        # NVIDIA: HT 1 (one query head per tile) against the whole GQA group, and 4 stages,
        # were axes of the H100 sweeps of run 22 (the group led at d128; d256 / d64 entries)
        extra = {"waves_per_eu": (0, 1, 2)} if family.startswith("cdna") else {} if amd else \
            {"HT": (0, 1)}
        cands = _grid(BLOCK_M=(32, 64, 128), BLOCK_N=(16, 32, 64, 128), num_warps=(4, 8),
                      num_stages=(1,) if amd else (1, 2, 3, 4), **extra)
        return [c for c in cands if c["BLOCK_N"] <= c["BLOCK_M"] * 2
                and not (c["num_warps"] == 8 and c["BLOCK_M"] < 64)]
    if kernel == "attn_decode":
        if amd:
            return _grid(BLOCK_N=(16, 32, 64, 128), num_warps=_warps(family, small=True),
                         num_stages=(1,), MIN_PARTITION=(128, 256, 512), SPLITS_PER_CU=(1, 2, 4, 8))
        # NVIDIA: the split scheme (how many, how long, merged in-kernel or by a second launch)
        # and the K/V pipeline depth carried the H100 sweep of run 21 (batch 1 at 4,096 keys
        # 20.3 -> 13.0 us); 1-2 warps and 16-key tiles never placed there
        return _grid(BLOCK_N=(32, 64, 128), num_warps=(4, 8), num_stages=(2, 3, 4),
                     MIN_PARTITION=(64, 128), SPLITS_PER_CU=(1, 2, 4), MAX_SPLITS=(16, 64),
                     FUSED_REDUCE=(0, 1))
    if kernel == "attn_reduce":
        return _grid(SPLIT_CHUNK=(8, 16, 32), num_warps=_warps(family, small=True), num_stages=(1,))
    if kernel == "rms_norm":
        return _grid(BLOCK_N=(1, 2, 4, 8, 16), num_warps=(1, 2, 4, 8, 16), num_stages=(1,))
    if kernel == "rope":
        return _grid(BLOCK_H=(1, 2, 4, 8, 16, 32), num_warps=(1, 2, 4, 8), num_stages=(1,))
    if kernel == "act_mul":
        return _grid(BLOCK_F=(256, 512, 1024, 2048, 4096), num_warps=(1, 2, 4, 8, 16), num_stages=(1,))
    if kernel == "sample":
        return _grid(BLOCK=(1024, 2048, 4096, 8192), num_warps=(4, 8, 16), num_stages=(1,))
    raise ValueError(f"kernel: no search space for {kernel!r} (have {', '.join(KERNELS)})")


def _ktile(c: dict, sub: int) -> dict:
    """KT (the K tile in elements) -> BLOCK_S (sub-blocks per tile) for the GGML type."""
    c = dict(c)
    c["BLOCK_S"] = max(1, c.pop("KT") // sub)
    return c


KERNELS = ("linear_gemv", "linear_gemm", "linear_kq", "dequant", "attn_prefill", "attn_decode", "attn_reduce",
           "rms_norm", "rope", "act_mul", "sample")


# ---------------------------------------------------------------------------------------------
# problems


@dataclass
class Problem:
    """One bucket's worth of work: `setup(device, dtype)` -> a zero-argument callable that runs
    the op once and returns its output (for the correctness check)."""
    kernel: str          # the table kernel the result is stored under (may be "linear_gemv.Q4_K")
    space_kernel: str    # the kernel whose space to search
    name: str
    dims: dict           # bucket dims, as the launcher computes them
    setup: Callable[[Any, Any], Callable[[], Any]]
    sub: int = 1
    tol: float = 2e-2    # candidates must match the shipped config's output to this (rel. to max)
    extra: dict = field(default_factory=dict)  # "int8": the type's GEMV takes int8 x;
    # "fixed": keys every candidate of this problem takes (over the current entry)


def _qweight(torch, type_name: str, n: int, k: int, dev):
    from forge.kernels import dequant

    tid = next(t for t, i in dequant.TYPES.items() if i.name == type_name)
    info = dequant.TYPES[tid]
    bpr = dequant.row_bytes(tid, k)
    g = torch.Generator(device="cpu").manual_seed(n * 31 + k)
    raw = torch.randint(0, 256, (n, bpr), dtype=torch.uint8, generator=g)
    if info.block > 1:
        scale = torch.tensor([0.01], dtype=torch.float16).view(torch.uint8)
        per = raw.view(n, k // info.block, -1)
        for off in _F16_FIELDS.get(type_name, ()):
            per[:, :, off], per[:, :, off + 1] = scale[0], scale[1]
    else:  # float weights: random values of the right dtype
        dt = torch.float16 if type_name == "F16" else torch.bfloat16
        raw = (torch.randn(n, k, generator=g) * 0.02).to(dt).view(torch.uint8)
    return dequant.repack(tid, (n, k), raw.to(dev)), info.sub


# Decode GEMV shapes (N x K), one per bucket: Llama-3-8B (q/o, k/v, fused q+k+v, ffn up, fused
# gate+up, down, output head) and Llama-3.2-1B (the same roles at hidden 2048), plus small models.
GEMV_SHAPES = [(4096, 4096), (1024, 4096), (6144, 4096), (14336, 4096), (28672, 4096),
               (4096, 14336), (128256, 4096), (2048, 2048), (512, 2048), (3072, 2048),
               (16384, 2048), (2048, 8192), (128256, 2048), (576, 576), (1536, 576)]
GEMM_SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (1024, 4096), (576, 576), (1536, 576)]
ROTATE_BYTES = 256 << 20  # a timed GEMV cycles through copies of its weight at least this large


def linear_problems(kernel: str, types=SWEEP_TYPES) -> list[Problem]:
    """Problems for linear_gemv (T = 1, every GEMV_SHAPES bucket) and linear_gemm. A GEMV
    problem's run() carries `rotations`: the same op on distinct copies of the weight (together
    >= ROTATE_BYTES, more than the L2 cache), which the graph timer replays in turn so that the
    weight streams from HBM as in a real decode step."""
    from forge.kernels import dequant, gemv_async, matmul

    gemv = kernel == "linear_gemv"
    shapes = GEMV_SHAPES if gemv else GEMM_SHAPES
    tokens = (1,) if gemv else (64, 512, 2048)
    out = []
    for tname in types:
        tid = dequant.TYPE_IDS[tname]
        info = dequant.TYPES[tid]
        sub = matmul.gemv_block(tid) if gemv else info.sub
        for n, k in shapes:
            if k % info.block:
                continue  # e.g. 576-wide rows of a 256-element K-quant: not a valid weight
            for t in tokens:
                def setup(dev, dtype, n=n, k=k, t=t, tname=tname):
                    import torch

                    w, _ = _qweight(torch, tname, n, k, dev)
                    x = torch.randn(t, k, device=dev, dtype=dtype)

                    def run():
                        return matmul.linear(x, w)

                    if gemv:
                        run.rotations = [lambda c=c: matmul.linear(x, c) for c in _rotations(w)]
                    return run

                out.append(Problem(f"{kernel}.{tname}", kernel, f"{tname} T{t} N{n} K{k}",
                                   {"T": t, "N": n, "K": k}, setup, sub=sub, tol=3e-2,
                                   extra={"int8": gemv and tname in matmul.INT8_TYPES,
                                          "async": gemv and tid in gemv_async.CHUNK}))
    return out


KQ_SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (14336, 4096), (4096, 14336), (1024, 4096),
             (128256, 4096)]


def _rotations(w, nbytes_min: int = ROTATE_BYTES, cap: int = 63):
    """w and distinct copies of it, together at least nbytes_min (more than the L2 cache)."""
    nbytes = sum(p.numel() * p.element_size() for p in w.data.values())
    extra = min(cap, -(-nbytes_min // nbytes) - 1)
    return [w] + [dataclasses.replace(w, data={key: p.clone() for key, p in w.data.items()})
                  for _ in range(extra)]


def kq_problems(types=SWEEP_TYPES) -> list[Problem]:
    """Problems for linear_kq (forge/kernels/kgemm.py: Q4_K / Q6_K at batch-decode T 16 / 32 /
    64, Llama-3-8B shapes). run() calls kgemm.linear with the config the launcher would use
    (matmul._kq_config, through the tables, so a sweep override reaches it) and carries
    `rotations` like the GEMV problems. Whether a shape takes kgemm at all is the linear_gemm
    entry's KQ_T, which the sweep leaves as it is (bench/bench_kq.py compares the paths)."""
    from forge.kernels import dequant, kgemm, matmul

    out = []
    for tname in types:
        if tname not in kgemm.KQ_TYPES:
            continue
        tid = dequant.TYPE_IDS[tname]
        for n, k in KQ_SHAPES:
            for t in (16, 32, 64):
                def setup(dev, dtype, n=n, k=k, t=t, tname=tname, tid=tid):
                    import torch

                    w, _ = _qweight(torch, tname, n, k, dev)
                    x = torch.randn(t, k, device=dev, dtype=torch.bfloat16)  # kgemm takes bf16
                    out_ = torch.empty(t, n, device=dev, dtype=torch.bfloat16)

                    def call(c):
                        return kgemm.linear(x, c, None, out_, matmul._kq_config(tid, t, n, k))

                    def run():
                        return call(w).clone()

                    run.rotations = [lambda c=c: call(c) for c in _rotations(w)]
                    return run

                # BLOCK_M follows T (the launcher default's), whatever a nearer-T entry has
                fixed = {"BLOCK_M": kgemm.kq_default(tid, t, n, k)["BLOCK_M"]}
                out.append(Problem(f"linear_kq.{tname}", "linear_kq", f"{tname} T{t} N{n} K{k}",
                                   {"T": t, "N": n, "K": k}, setup, tol=3e-2,
                                   extra={"fixed": fixed}))
    return out


def attention_problems(kernel: str) -> list[Problem]:
    out = []
    # Llama-3.2-1B, Llama-3-8B, a 2:1 d128 (Llama-3-70B-like), Gemma 3 270M / 1B (one KV head:
    # its 512-token chunk has too few tiles for an H100, so the prefill split keys run there)
    for d, h, hkv in ((64, 32, 8), (128, 32, 8), (128, 32, 4), (256, 4, 1)):
        g = h // hkv
        if kernel == "attn_prefill":
            # the bucket's t is the call's query tokens (a few-tile chunk and a long prompt may
            # want different tiles: Gemma 3 heads on an H100, bench/results/run24): a lone
            # 512-token chunk, 2048 tokens as one prompt or four chunks, an 8192-token prompt
            cases = [("chunk 1x512@4096", [512], [4096], None),
                     ("prefill 1x2048", [2048], [2048], None),
                     ("chunk 4x512@4096", [512] * 4, [4096] * 4, None),
                     ("prefill 1x8192", [8192], [8192], None)]
            if d == 256:
                # and Gemma 3's local layers (the bucket's kv: the keys a query may attend,
                # here the 512-key window), whose tiles differ from the global layers'
                cases += [("local chunk 1x2048@6144 w512", [2048], [6144], None, 512),
                          ("local prefill 1x8192 w512", [8192], [8192], None, 512)]
        else:
            # batch 1 at a short and a long context, in a graph captured for 8,192 keys (the
            # split count comes from that capacity, as in the engine's decode graphs), and two
            # batches; all timed in CUDA graphs (batch 1's few microseconds would otherwise be
            # launch overhead)
            cases = [("decode 1x512", [1], [512], 8192), ("decode 1x4096", [1], [4096], 8192),
                     ("decode 16x4096", [1] * 16, [4096] * 16, None),
                     ("decode 64x1024", [1] * 64, [1024] * 64, None)]
        for label, qlens, klens, cap, *win in cases:
            window = win[0] if win else None

            def setup(dev, dtype, d=d, h=h, hkv=hkv, qlens=qlens, klens=klens, cap=cap,
                      window=window):
                return _attn_setup(dev, dtype, d, h, hkv, qlens, klens, max_seq_len=cap,
                                   window=window)

            if kernel == "attn_prefill":
                from forge.kernels.attention import prefill_keys

                kv = prefill_keys(max(max(klens), cap or 0), window or 0)
                dims = {"d": d, "g": g, "kv": kv, "t": sum(qlens)}
            else:
                dims = {"d": d, "g": g}
            out.append(Problem(kernel, kernel, f"{label} d{d} h{h}/{hkv}", dims, setup))
    return out


def _attn_setup(dev, dtype, d, h, hkv, qlens, klens, bs: int = 16,
                max_seq_len: int | None = None, window: int | None = None):
    """The attention call of one problem; `max_seq_len` (at least the longest context) as a
    graph's capacity: block tables that wide and the decode split count derived from it;
    `window`: a sliding window of that many keys."""
    import torch

    from forge.kernels import attention

    nseq = len(qlens)
    blocks_per = [-(-kl // bs) for kl in klens]
    nb = sum(blocks_per) + 1
    kc = torch.randn(nb, bs, hkv, d, device=dev, dtype=dtype)
    vc = torch.randn(nb, bs, hkv, d, device=dev, dtype=dtype)
    mk = max(max(klens), max_seq_len or 0)
    w = -(-mk // bs)
    bt = torch.zeros(nseq, w, dtype=torch.int32)
    nxt = 1
    for i, b in enumerate(blocks_per):
        bt[i, :b] = torch.arange(nxt, nxt + b, dtype=torch.int32)
        nxt += b
    qsl = torch.tensor([0] + list(itertools.accumulate(qlens)), dtype=torch.int32, device=dev)
    sl = torch.tensor(klens, dtype=torch.int32, device=dev)
    q = torch.randn(sum(qlens), h * d, device=dev, dtype=dtype)
    bt = bt.to(dev)
    mq = max(qlens)
    return lambda: attention.attention(q, kc, vc, qsl, sl, bt, h, hkv, d ** -0.5,
                                       sliding_window=window, max_query_len=mq, max_seq_len=mk)


def elementwise_problems(kernel: str) -> list[Problem]:
    out = []
    if kernel == "rms_norm":
        for dd in (128, 576, 2048, 4096, 8192):
            def setup(dev, dtype, dd=dd):
                import torch

                from forge.kernels import norm

                xs = [torch.randn(n, dd, device=dev, dtype=dtype) for n in (1, 64, 4096)]
                wt = torch.randn(dd, device=dev, dtype=dtype)
                return lambda: torch.cat([norm.rms_norm(x, wt, 1e-6).flatten() for x in xs])

            out.append(Problem(kernel, kernel, f"D{dd} rows 1/64/4096", {"D": dd}, setup))
    elif kernel == "act_mul":
        for f in (1536, 8192, 14336):
            def setup(dev, dtype, f=f):
                import torch

                from forge.kernels import activation

                xs = [(torch.randn(n, f, device=dev, dtype=dtype), torch.randn(n, f, device=dev, dtype=dtype))
                      for n in (1, 64, 2048)]
                return lambda: torch.cat([activation.act_mul(g, u, "silu").flatten() for g, u in xs])

            out.append(Problem(kernel, kernel, f"F{f} rows 1/64/2048", {"F": f}, setup))
    elif kernel == "rope":
        for h, hkv, dd in ((32, 8, 128), (8, 4, 256), (9, 3, 64)):
            def setup(dev, dtype, h=h, hkv=hkv, dd=dd):
                return _rope_setup(dev, dtype, h, hkv, dd)

            out.append(Problem(kernel, kernel, f"H{h}/{hkv} D{dd} T 1/2048", {"H": h, "D": dd}, setup))
    return out


def _rope_setup(dev, dtype, h, hkv, dd, bs: int = 16):
    import torch

    from forge.kernels import rope as rope_mod
    from forge.runtime.backend import RopeSpec

    spec = RopeSpec(rot_dim=dd, base=10000.0, style="neox")
    runs = []
    for t in (1, 2048):
        nb = -(-t // bs) + 1
        kc = torch.zeros(nb, bs, hkv, dd, device=dev, dtype=dtype)
        vc = torch.zeros_like(kc)
        q = torch.randn(t, h * dd, device=dev, dtype=dtype)
        k = torch.randn(t, hkv * dd, device=dev, dtype=dtype)
        v = torch.randn(t, hkv * dd, device=dev, dtype=dtype)
        pos = torch.arange(t, dtype=torch.int32, device=dev)
        slots = torch.arange(bs, bs + t, dtype=torch.int64, device=dev)
        runs.append((q, k, v, pos, kc, vc, slots))
    return lambda: torch.cat([rope_mod.rope(q, k, v, p, kc, vc, s, spec, h, hkv, dd).flatten()
                              for q, k, v, p, kc, vc, s in runs])


def problems(kernel: str, types=SWEEP_TYPES) -> list[Problem]:
    if kernel in ("linear_gemv", "linear_gemm"):
        return linear_problems(kernel, types)
    if kernel == "linear_kq":
        return kq_problems(types)
    if kernel in ("attn_prefill", "attn_decode"):
        return attention_problems(kernel)
    if kernel in ("rms_norm", "act_mul", "rope"):
        return elementwise_problems(kernel)
    raise ValueError(f"kernel: no sweep problems for {kernel!r} (have {', '.join(SWEEPABLE)})")


SWEEPABLE = ("linear_gemv", "linear_gemm", "linear_kq", "attn_prefill", "attn_decode", "rms_norm",
             "act_mul", "rope")
