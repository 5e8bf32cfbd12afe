#!/bin/bash
# Session 22 (run 26), H100 call 1: fewer first-start compiles (p_dedupe.patch: PDL on every
# launch, aligned graph inputs, no integer specialisation of attention's num_seqs / num_splits /
# stride_bt and the GEMM's T). The census (run25/compile_census.py) of each tree on its own empty
# Triton cache, Gemma 3 1B-shaped Q4_K_M; and whether Triton 3.6 compiles in parallel from threads.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
P=$PWD/bench/results/run26/p_dedupe.patch
rm -rf /tmp/old && mkdir /tmp/old && cp -r forge /tmp/old/
(cd /tmp/old && patch -s -R -p1 < $P) || echo "PATCH FAILED"
echo "do_not_specialize in new / old: $(grep -c do_not_specialize forge/kernels/attention.py) / $(grep -c do_not_specialize /tmp/old/forge/kernels/attention.py)"
F() { grep -v "^nanobind\| - leaked\|Warning\|warn"; }
for m in serial threads; do
  rm -rf /tmp/tc-$m
  TRITON_CACHE_DIR=/tmp/tc-$m PYTHONPATH=/tmp/site:$PWD timeout 150 python3 bench/results/run26/thread_compile.py $m 24 12 2>&1 | F | tail -1
done | tee $OUT/threads.log
PYTHONPATH=/tmp/site:$PWD python3 -c "
from forge.testing.synthetic import write_synthetic
write_synthetic('/tmp/forge-synthetic-gemma3-1b-Q4_K_M.gguf', 'gemma3-1b', 'Q4_K_M', seed=0)"
C=$PWD/bench/results/run25/compile_census.py
rm -rf /tmp/tc-new /tmp/tc-old
OUT=$OUT TRITON_CACHE_DIR=/tmp/tc-new PYTHONPATH=/tmp/site:$PWD timeout 240 python3 $C gemma3-1b Q4_K_M new 2>&1 | F | grep -v "gemma3-1b Q4_K_M:" | tee $OUT/census_new.log
OUT=$OUT TRITON_CACHE_DIR=/tmp/tc-old PYTHONPATH=/tmp/site:/tmp/old timeout 240 python3 $C gemma3-1b Q4_K_M old 2>&1 | F | grep -v "gemma3-1b Q4_K_M:" | tee $OUT/census_old.log
