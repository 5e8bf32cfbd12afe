#!/bin/bash
# Session 22 (run 26), H100 call 5: GPU tests of the final tree (PDL, attention, the GEMM, the
# engine), then the tg128 A/B of calls 3-4 in the other order (decode / all / decode / all),
# Llama-3.2-1B Q4_K_M: calls 3-4 always ran mode "all" first in a pair.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
timeout 330 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_pdl.py tests/kernels/test_attention.py \
  tests/runtime/test_engine.py tests/kernels/test_matmul.py 2>&1 | grep -v "^nanobind\| - leaked" | tail -4 | tee $OUT/tests.log
S=llama3.2-1b
run() {
  FORGE_PDL=$([ $1 = all ] && echo 1 || echo decode) timeout 100 python3 -m forge.cli bench \
    --synthetic $S --quant Q4_K_M -r 3 -p 512 -n 128 --json $OUT/e2e_${S}_rev_$1_$2.json 2>&1 \
    | grep -E "\| (pp|tg)" | sed "s/^/$S $1 ($2): /"
}
{ run decode 1; run all 1; run decode 2; run all 2; } | tee $OUT/pdl_ab_rev.log
