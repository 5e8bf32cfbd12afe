#!/bin/bash
# Session 16, H100 call 3: Q4_K 4096x4096, the one cell under 80%: a wider launch grid (BN 2 / 4 / 8,
# W 1 / 2 / 4, S 2 / 3 / 4, XA 1 / 0), in order and reversed; BN 8 at the other shapes and for
# Q8_0; then bench_gemv_floor (pure-read floors, torch's bf16 GEMV, the shipped table) for
# Q4_K / Q8_0 / F16 at the three square-ish 8B shapes.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
F="^nanobind\| - leaked\|UserWarning\|warn_once"
timeout 120 python3 bench/gluon_gemv.py --type Q4_K --shapes 4096x4096 --json "$OUT/q4k_4096_a.json" \
  --grid 2:1:2:1,2:1:2:0,2:1:3:1,2:1:3:0,2:1:4:1,2:1:4:0,2:2:2:1,2:2:2:0,2:2:3:1,2:2:3:0,2:2:4:1,2:2:4:0,2:4:2:1,2:4:2:0,2:4:3:1,2:4:3:0,2:4:4:1,2:4:4:0,4:1:2:1,4:1:2:0,4:1:3:1,4:1:3:0,4:1:4:1,4:1:4:0,4:2:2:1,4:2:2:0,4:2:3:1,4:2:3:0,4:2:4:1,4:2:4:0,4:4:2:1,4:4:2:0,4:4:3:1,4:4:3:0,4:4:4:1,4:4:4:0,8:1:2:1,8:1:2:0,8:1:3:1,8:1:3:0,8:1:4:1,8:1:4:0,8:2:2:1,8:2:2:0,8:2:3:1,8:2:3:0,8:2:4:1,8:2:4:0,8:4:2:1,8:4:2:0,8:4:3:1,8:4:3:0,8:4:4:1,8:4:4:0 2>&1 | grep -v "$F"
timeout 120 python3 bench/gluon_gemv.py --type Q4_K --shapes 4096x4096 --json "$OUT/q4k_4096_b.json" \
  --grid 8:4:4:0,8:4:4:1,8:4:3:0,8:4:3:1,8:4:2:0,8:4:2:1,8:2:4:0,8:2:4:1,8:2:3:0,8:2:3:1,8:2:2:0,8:2:2:1,8:1:4:0,8:1:4:1,8:1:3:0,8:1:3:1,8:1:2:0,8:1:2:1,4:4:4:0,4:4:4:1,4:4:3:0,4:4:3:1,4:4:2:0,4:4:2:1,4:2:4:0,4:2:4:1,4:2:3:0,4:2:3:1,4:2:2:0,4:2:2:1,4:1:4:0,4:1:4:1,4:1:3:0,4:1:3:1,4:1:2:0,4:1:2:1,2:4:4:0,2:4:4:1,2:4:3:0,2:4:3:1,2:4:2:0,2:4:2:1,2:2:4:0,2:2:4:1,2:2:3:0,2:2:3:1,2:2:2:0,2:2:2:1,2:1:4:0,2:1:4:1,2:1:3:0,2:1:3:1,2:1:2:0,2:1:2:1 2>&1 | grep -v "$F"
timeout 100 python3 bench/gluon_gemv.py --type Q4_K --shapes 14336x4096,4096x14336,6144x4096 \
  --json "$OUT/q4k_bn8.json" --grid 8:1:3:1,8:1:4:1,8:2:3:1,8:2:4:1,8:1:4:0,2:1:4:1,2:2:4:1 2>&1 | grep -v "$F"
timeout 100 python3 bench/gluon_gemv.py --type Q8_0 --shapes 4096x4096,14336x4096 \
  --json "$OUT/q8_bn8.json" --grid 8:1:4:1,8:2:4:1,8:2:3:1,8:4:4:1,4:2:4:1 2>&1 | grep -v "$F"
timeout 220 python3 bench/bench_gemv_floor.py --no-variants --types Q4_K,Q8_0,F16 \
  --shapes 4096x14336,14336x4096,4096x4096 --json "$OUT/floor.json" 2>&1 | grep -v "$F" | tail -16
