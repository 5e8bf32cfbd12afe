#!/bin/bash
# Session 17, H100 call 1: where things stand. Decode / prefill attention against SDPA (last
# timed in run 3), the 4096->128256 GEMVs (not re-timed since run 17), and one 8B Q4_K_M decode
# step at ctx 4096 taken apart (PDL off: real per-kernel durations).
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
F="^nanobind\| - leaked\|UserWarning\|warn_once"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tail -1
timeout 200 python3 bench/bench_attention.py 2>&1 | grep -v "$F" | tee "$OUT/attention.log"
timeout 150 python3 bench/bench_gemv_floor.py --no-variants --types F16,Q8_0,Q4_K,Q6_K \
  --shapes 128256x4096 --json "$OUT/floor_head.json" 2>&1 | grep -v "$F" | tail -8
FORGE_PDL=0 timeout 180 python3 bench/profile_decode.py --ctx 4096 --steps 16 2>&1 | grep -v "$F\|it/s\]\|B/s\]" \
  > "$OUT/profile_ctx4096_nopdl.txt"; grep -E "step|_kernel " "$OUT/profile_ctx4096_nopdl.txt" | head -24
