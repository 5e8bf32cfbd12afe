"""Run 22 call 3: forge paged prefill (TFLOP/s) over a few configs, for an A/B of kernel patches
applied between runs (p2_fold_scale.patch, p3_idx32.patch). Label from argv[1]."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import prefill_bench2 as b  # noqa: E402

CFGS = [(0, 128, 64, 8, 3), (1, 64, 64, 4, 3), (2, 64, 64, 4, 3), (4, 64, 64, 4, 3),
        (1, 128, 64, 8, 3), (1, 128, 128, 8, 3), (2, 128, 64, 8, 3)]


def main(label):
    gen = torch.Generator().manual_seed(0)
    data = {(n, bs): b.forge_case(n, bs, gen) for n in b.NS for bs in (16, 128)}
    for bs in (16, 128):
        for ht, bm, bn, w, s in CFGS:
            cfg = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s, SINGLE_LOOP=0,
                       QK_CHUNK=0, HT=ht)
            row, info = [], ""
            with b.tuning.override({"attn_prefill": {"*": cfg}}):
                b.A.clear_config_cache()
                for n in b.NS:
                    q, kc, vc, qsl, sl, bt, out = data[(n, bs)]
                    f = lambda: b.A.attention(q, kc, vc, qsl, sl, bt, b.H, b.HKV, b.D ** -0.5,  # noqa: E731
                                              max_query_len=n, max_seq_len=n, out=out)
                    ms = b.bench(f)
                    if not info:
                        info = b.last_kernel_info(b.A._attn_prefill_kernel)
                        info += f" err={b.ref_err(n, q, kc, vc, bt, out):.1e}"
                    row.append(b.tflops(n, ms))
            print(f"{label:6s} bs{bs:<4d} HT{ht} BM{bm:<3d} BN{bn:<3d} w{w} s{s}  "
                  + " ".join(f"{x:6.1f}" for x in row) + "  " + info, flush=True)
    b.A.clear_config_cache()


if __name__ == "__main__":
    main(sys.argv[1])
