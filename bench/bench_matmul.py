"""Microbenchmark of forge.kernels.matmul.linear on a GPU (not part of the test suite).

For each weight type at the Llama-3-8B shapes (N x K):
- decode: batch-1 GEMV time (median of triton.testing.do_bench, which also flushes L2 between
  calls; on top of that every call uses the next of several copies of the weight, so that the
  weight always streams from HBM), achieved GB/s = bytes of the repacked weight / time, the
  fraction of a device-to-device copy's bandwidth measured in the same run, and torch's bf16 GEMV
  (x @ W.T, W bf16, also rotated) on the same shape; "exact": the GEMV with the int8-activation
  (dp4a) path turned off (X_INT8 = 0: exact float32 decode), for the types that have it;
  "f32x": the GEMV with float32 activations (the output head's logits path);
- batch decode: linear() at T = 32 tokens (rotated weights), as GB/s of weight streamed;
- prefill at T tokens (512 by default), TFLOP/s: linear() as launched (dequantize + cuBLAS above
  DEQUANT_T on NVIDIA, torch.matmul for float weights), the fused tl.dot GEMM forced
  (DEQUANT_T = 0), dequantize-to-bf16 + torch.matmul, and torch.matmul on a bf16 weight.

    python bench/bench_matmul.py                       # everything, prints a table
    python bench/bench_matmul.py --types Q4_K,F16 --shapes 4096x4096 --json out.json
    python bench/bench_matmul.py --graph               # also: GEMV replayed in a CUDA graph

Configs come from forge.kernels.tuning as at run time; when a table entry replaces the
launcher's default GEMV config, the default is timed too and shown in parentheses.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autotune.timing import graph_ms  # noqa: E402

SHAPES = {"14336x4096": (14336, 4096), "4096x14336": (4096, 14336), "4096x4096": (4096, 4096),
          "128256x4096": (128256, 4096)}
TYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q6_K", "Q5_K"]
# byte offsets of the fp16 scale fields in one GGUF block (kept sane in random blocks)
SCALE_FIELDS = {"Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2),
                "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}
ROTATE_BYTES = 512 << 20  # stream at least this much weight between repeats of one copy


def random_raw(name: str, N: int, K: int, gen: torch.Generator) -> torch.Tensor:
    """Random GGUF bytes [N, bytes_per_row] on the GPU with finite fp16 scales."""
    from forge.kernels import dequant as dq

    info = dq.TYPES[dq.TYPE_IDS[name]]
    dev = "cuda"
    if info.block == 1:
        dt = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}[name]
        w = (torch.randn((N, K), device=dev, generator=gen) * 0.02).to(dt)
        return w.view(torch.uint8).reshape(N, -1)
    nb = K // info.block
    raw = torch.randint(0, 256, (N, nb, info.type_size), dtype=torch.uint8, device=dev,
                        generator=gen)
    for off in SCALE_FIELDS[name]:
        d = (torch.rand((N, nb), device=dev, generator=gen) * 1e-3 + 1e-4).to(torch.float16)
        raw[:, :, off:off + 2] = d.view(torch.uint8).reshape(N, nb, 2)
    return raw.reshape(N, -1)


def qtensor_bytes(qt) -> int:
    return sum(t.numel() * t.element_size() for t in qt.data.values())


def copies_for(nbytes: int) -> int:
    return max(1, min(64, math.ceil(ROTATE_BYTES / max(nbytes, 1))))


def median_ms(fn, rep_ms: int = 200) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"))


@contextlib.contextmanager
def launcher_defaults():
    """Ignore every tuning table for linear_* (the launchers' defaults apply)."""
    from forge.kernels import matmul as mm
    from forge.kernels import tuning

    with tuning.override({"linear_gemv": {"*": {}}, "linear_gemm": {"*": {}}}):
        mm.clear_config_cache()
        try:
            yield
        finally:
            mm.clear_config_cache()


def copy_bandwidth() -> float:
    """GB/s of a 1 GiB device-to-device copy (bytes read + bytes written)."""
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    return 2 * n / ms / 1e6  # the buffers are freed on return


@contextlib.contextmanager
def forced_gemm():
    """linear() with the fused GEMM at every T above the GEMV range (DEQUANT_T = 0)."""
    from forge.kernels import matmul as mm
    from forge.kernels import tuning

    with tuning.override({"linear_gemm": {"*": {"DEQUANT_T": 0}}}):
        mm.clear_config_cache()
        try:
            yield
        finally:
            mm.clear_config_cache()


def bench_shape(name: str, N: int, K: int, T_prefill: int, use_graph: bool, gen) -> dict:
    from forge.kernels import dequant as dq
    from forge.kernels import matmul as mm

    tid = dq.TYPE_IDS[name]
    raw = random_raw(name, N, K, gen)
    first = dq.repack(tid, (N, K), raw)
    del raw
    wbytes = qtensor_bytes(first)
    ws = [first]
    for _ in range(copies_for(wbytes) - 1):
        ws.append(dq.repack(tid, (N, K), random_raw(name, N, K, gen)))
    x1 = torch.randn((1, K), device="cuda", generator=gen).to(torch.bfloat16)
    out1 = torch.empty((1, N), device="cuda", dtype=torch.bfloat16)
    it = [0]

    def gemv():
        i = it[0] = (it[0] + 1) % len(ws)
        mm.linear(x1, ws[i], out=out1)

    ms = median_ms(gemv)
    res = {"type": name, "N": N, "K": K, "weight_bytes": wbytes, "copies": len(ws),
           "gemv_us": ms * 1e3, "gemv_GBps": wbytes / ms / 1e6}
    gv, gm = mm._configs(tid, 1, N, K)
    res["gemv_config"] = gv
    # The launcher's own default, when a tuning table overrides it (shipped "reasoned" entries
    # may predate the kernel): an empty override entry lays nothing over the default.
    with launcher_defaults():
        gv_default = mm._configs(tid, 1, N, K)[0]
        if gv_default != gv:
            res["gemv_default_config"] = gv_default
            res["gemv_default_us"] = median_ms(gemv) * 1e3
    if name in mm.INT8_TYPES:
        from forge.kernels import tuning

        with tuning.override({"linear_gemv": {"*": {"X_INT8": 0}}}):
            mm.clear_config_cache()
            res["gemv_exact_us"] = median_ms(gemv) * 1e3
        mm.clear_config_cache()
    x1f = x1.float()
    out1f = torch.empty((1, N), device="cuda", dtype=torch.float32)

    def gemv_f32():
        i = it[0] = (it[0] + 1) % len(ws)
        mm.linear(x1f, ws[i], out=out1f)

    res["gemv_f32x_us"] = median_ms(gemv_f32) * 1e3
    # batch decode: 32 token rows
    x32 = torch.randn((32, K), device="cuda", generator=gen).to(torch.bfloat16)
    out32 = torch.empty((32, N), device="cuda", dtype=torch.bfloat16)

    def batch32():
        i = it[0] = (it[0] + 1) % len(ws)
        mm.linear(x32, ws[i], out=out32)

    ms32 = median_ms(batch32)
    res.update(batch32_us=ms32 * 1e3, batch32_GBps=wbytes / ms32 / 1e6,
               batch32_config=mm._configs(tid, 32, N, K)[1])
    if use_graph:
        outs = [torch.empty_like(out1) for _ in ws]

        def all_calls():
            for w, o in zip(ws, outs):
                mm.linear(x1, w, out=o)

        res["gemv_graph_us"] = graph_ms([all_calls]) / len(ws) * 1e3  # all_calls: one per copy
    # prefill
    xp = torch.randn((T_prefill, K), device="cuda", generator=gen).to(torch.bfloat16)
    outp = torch.empty((T_prefill, N), device="cuda", dtype=torch.bfloat16)
    flops = 2.0 * T_prefill * N * K
    ms_p = median_ms(lambda: mm.linear(xp, first, out=outp))
    res.update(prefill_T=T_prefill, linear_us=ms_p * 1e3, linear_TFLOPs=flops / ms_p / 1e9,
               gemm_config=mm._configs(tid, T_prefill, N, K)[1])
    if dq.TYPES[tid].block > 1:
        with forced_gemm():
            ms_g = median_ms(lambda: mm.linear(xp, first, out=outp))
        res.update(gemm_us=ms_g * 1e3, gemm_TFLOPs=flops / ms_g / 1e9)
    ms_dq = median_ms(lambda: torch.matmul(xp, dq.dequantize(first, dtype=torch.bfloat16).t(),
                                           out=outp))
    res.update(dequant_matmul_us=ms_dq * 1e3, dequant_matmul_TFLOPs=flops / ms_dq / 1e9)
    return res  # the weights are freed on return


def bench_torch(N: int, K: int, T_prefill: int, gen) -> dict:
    """torch bf16: x @ W.T at batch 1 (rotating copies) and at T_prefill."""
    nbytes = N * K * 2
    ws = [(torch.randn((N, K), device="cuda", generator=gen) * 0.02).to(torch.bfloat16)
          for _ in range(copies_for(nbytes))]
    x1 = torch.randn((1, K), device="cuda", generator=gen).to(torch.bfloat16)
    it = [0]

    def gemv():
        i = it[0] = (it[0] + 1) % len(ws)
        return x1 @ ws[i].t()

    ms = median_ms(gemv)
    xp = torch.randn((T_prefill, K), device="cuda", generator=gen).to(torch.bfloat16)
    ms_p = median_ms(lambda: xp @ ws[0].t())
    return {"gemv_us": ms * 1e3, "gemv_GBps": nbytes / ms / 1e6,
            "gemm_us": ms_p * 1e3, "gemm_TFLOPs": 2.0 * T_prefill * N * K / ms_p / 1e9}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--graph", action="store_true", help="also time the GEMV in a CUDA graph")
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_matmul: needs a CUDA or ROCm GPU", file=sys.stderr)
        return 2
    types = [t for t in args.types.split(",") if t]
    shapes = [s for s in args.shapes.split(",") if s]
    for s in shapes:
        if s not in SHAPES:
            ap.error(f"--shapes: unknown shape {s!r} (known: {', '.join(SHAPES)})")
    gen = torch.Generator(device="cuda").manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    copy_bw = copy_bandwidth()
    torch.cuda.empty_cache()
    print(f"device: {props.name}; device-to-device copy: {copy_bw:.0f} GB/s; "
          f"prefill T={args.prefill_tokens}")
    results = {"device": props.name, "copy_GBps": copy_bw, "rows": [], "torch": {}}
    hdr = (f"{'shape':>12} {'type':>5} {'MB':>7} {'gemv us':>8} {'GB/s':>6} {'%copy':>6} "
           f"{'bf16 us':>8} {'x bf16':>6} {'exact':>7} {'f32x us':>8} | {'T32 us':>8} {'GB/s':>6} | "
           f"{'linear':>7} {'fused':>7} {'deq+mm':>7} {'torch':>6} TF/s")
    print(hdr)
    print("-" * len(hdr))
    for s in shapes:
        N, K = SHAPES[s]
        tref = bench_torch(N, K, args.prefill_tokens, gen)
        torch.cuda.empty_cache()
        results["torch"][s] = tref
        for t in types:
            try:
                r = bench_shape(t, N, K, args.prefill_tokens, args.graph, gen)
            except torch.cuda.OutOfMemoryError:
                print(f"{s:>12} {t:>5}  (out of memory)")
                torch.cuda.empty_cache()
                continue
            torch.cuda.empty_cache()
            r["shape"] = s
            r["copy_fraction"] = r["gemv_GBps"] / copy_bw
            r["speedup_vs_torch_bf16_gemv"] = tref["gemv_us"] / r["gemv_us"]
            results["rows"].append(r)
            fused = f"{r['gemm_TFLOPs']:7.1f}" if "gemm_TFLOPs" in r else f"{'-':>7}"
            exact = f"{r['gemv_exact_us']:7.1f}" if "gemv_exact_us" in r else f"{'-':>7}"
            line = (f"{s:>12} {t:>5} {r['weight_bytes'] / 1e6:7.1f} {r['gemv_us']:8.1f} "
                    f"{r['gemv_GBps']:6.0f} {100 * r['copy_fraction']:5.1f}% "
                    f"{tref['gemv_us']:8.1f} {r['speedup_vs_torch_bf16_gemv']:5.2f}x "
                    f"{exact} {r['gemv_f32x_us']:8.1f} | {r['batch32_us']:8.1f} "
                    f"{r['batch32_GBps']:6.0f} | "
                    f"{r['linear_TFLOPs']:7.1f} {fused} {r['dequant_matmul_TFLOPs']:7.1f} "
                    f"{tref['gemm_TFLOPs']:6.1f}")
            if args.graph:
                line += f"  graph {r['gemv_graph_us']:.1f} us"
            if "gemv_default_us" in r:
                line += f"  (launcher default config: {r['gemv_default_us']:.1f} us)"
            print(line, flush=True)
    print(f"GB/s: repacked weight bytes / median time; %copy: of the copy bandwidth above; "
          f"x bf16: torch bf16 GEMV time / ours; exact: our GEMV without int8 activations (us); "
          f"f32x: our GEMV with float32 activations (us); "
          f"T32: linear() at 32 token rows; TF/s at T={args.prefill_tokens}: linear() as "
          f"launched, the fused GEMM forced, dequantize + torch.matmul, torch.matmul bf16.")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
