#!/bin/bash
# Session 18 (run 22), H100 call 9: 32-bit cache offsets in decode attention too
# (p_decode_idx32.patch) against the kernel before (patch reversed), decode table new / old /
# new; then the rope kernel at a 512-token prefill: graph time and ncu.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
F="^nanobind\| - leaked\|UserWarning\|warn_once\|WARNING"
R=bench/results/run22
for side in new old new; do
  [ $side = old ] && patch -s -R -p1 < $R/p_decode_idx32.patch
  echo "== $side"
  timeout 120 python3 bench/bench_attention.py --only decode 2>&1 | grep -v "$F"
  [ $side = old ] && patch -s -p1 < $R/p_decode_idx32.patch
done 2>&1 | tee $OUT/decode_idx32.log
timeout 60 python3 $R/rope_probe.py 2>&1 | grep -v "$F" | tee $OUT/rope_probe.log
NCU=$(which ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
NCU=1 timeout 120 $NCU --clock-control none --kernel-name regex:_rope_kernel --launch-skip 2 \
  --launch-count 1 --section SpeedOfLight --section Occupancy --section LaunchStats \
  --section WarpStateStats --section MemoryWorkloadAnalysis python3 $R/rope_probe.py 2>&1 \
  | grep -v "$F" > $OUT/rope_ncu.log; tail -80 $OUT/rope_ncu.log
