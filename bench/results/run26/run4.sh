#!/bin/bash
# Session 22 (run 26), H100 call 4: (1) the first-cuBLAS-call-in-a-capture check of
# tests/runtime/test_engine.py run against HEAD's tree (old: expected to fail) and the new one;
# (2) run2.sh llama3-8b (PDL A/B), eager with 6 repetitions.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
P=$PWD/bench/results/run26/p_dedupe.patch
rm -rf /tmp/old && mkdir /tmp/old && cp -r forge /tmp/old/
(cd /tmp/old && patch -s -R -p1 < $P) || echo "PATCH FAILED"
echo "_init_blas in new / old: $(grep -c _init_blas forge/runtime/graphs.py) / $(grep -c _init_blas /tmp/old/forge/runtime/graphs.py)"
export TRITON_CACHE_DIR=/tmp/triton-cache
S=$(python3 -c "
import re
src = open('tests/runtime/test_engine.py').read()
print(re.search(r'_FIRST_BLAS_IN_CAPTURE = r\"\"\"(.*?)\"\"\"', src, re.S).group(1))")
for t in /tmp/old $PWD; do
  (cd $t && PYTHONPATH=/tmp/site timeout 100 python3 -c "$S" 2>&1 | grep -E "^OK|Error" | head -2 | sed "s|^|$t: |")
done | tee $OUT/blas.log
PYTHONPATH=/tmp/site:$PWD timeout 100 python3 -m pytest -q -p no:cacheprovider tests/runtime/test_engine.py -k first_cublas 2>&1 | tail -1 | tee -a $OUT/blas.log
sed -i 's/--no-prefill-graphs; done/--no-prefill-graphs -r 6; done/' bench/results/run26/run2.sh
bash bench/results/run26/run2.sh llama3-8b
