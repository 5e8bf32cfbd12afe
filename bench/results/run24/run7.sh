#!/bin/bash
# Session 20 (run 24), H100 call 7: pp_profile.py (per-rep GPU busy time vs wall of the
# bench's pp512 @ d4096, Gemma 3 1B-shaped Q4_K_M, prefill graphs on).
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
timeout 400 python3 bench/results/run24/pp_profile.py 8 2>&1 | grep -v "^nanobind\| - leaked\|UserWarning\|warn_once\|WARNING" | tee $OUT/pp_profile.log
