#!/bin/bash
# Session 22 (run 26), H100 call 3: (1) the cuBLAS-in-capture load failure: HEAD's tree (old)
# against the new one (graphs._init_blas), a fresh process each, tiny-llama Q4_K_M; and the new
# GPU test. (2) run2.sh llama3.2-1b (PDL A/B).
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
P=$PWD/bench/results/run26/p_dedupe.patch
rm -rf /tmp/old && mkdir /tmp/old && cp -r forge /tmp/old/
(cd /tmp/old && patch -s -R -p1 < $P) || echo "PATCH FAILED"
echo "_init_blas in new / old: $(grep -c _init_blas forge/runtime/graphs.py) / $(grep -c _init_blas /tmp/old/forge/runtime/graphs.py)"
export TRITON_CACHE_DIR=/tmp/triton-cache
S=$(python3 - <<'PY'
import re
src = open("tests/runtime/test_engine.py").read()
print(re.search(r'_FIRST_BLAS_IN_CAPTURE = r"""(.*?)"""', src, re.S).group(1))
PY
)
for t in /tmp/old $PWD; do
  (cd /tmp && PYTHONPATH=/tmp/site:$t timeout 200 python3 -c "$S" /tmp/blas_$(basename $t).gguf 2>&1 \
    | grep -E "^OK|Error" | head -3 | sed "s|^|$t: |")
done | tee $OUT/blas.log
PYTHONPATH=/tmp/site:$PWD timeout 200 python3 -m pytest -q -p no:cacheprovider tests/runtime/test_engine.py -k first_cublas 2>&1 | tail -2 | tee -a $OUT/blas.log
bash bench/results/run26/run2.sh llama3.2-1b
