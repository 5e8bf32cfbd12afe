# Run 28 call 2: GPU tests of the fresh path; the d128 prefill A/B repeated; 8B pp8192 end to end
# with FORGE_ATTN_FRESH 1 / 0 (one process each, same Triton cache)
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/tc PYTHONUNBUFFERED=1
F() { grep -v "^nanobind\| - leaked\|%|"; }
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_attention.py tests/kernels/test_rope.py -k "fresh or k_out or gpu" 2>&1 | tail -6 | tee $OUT/call2_tests.log
for i in 1 2; do
timeout 100 python3 bench/bench_attention.py --only prefill --cases 2048@0,8192@0,32768@0 2>&1 | tee -a $OUT/call2_prefill_d128.log
done
for f in 1 0 1 0; do
FORGE_ATTN_FRESH=$f timeout 150 python3 -m forge.cli bench --synthetic llama3-8b --quant Q4_K_M -p 8192 -n 2 -r 3 2>&1 | F | tail -5 | sed "s/^/fresh=$f /" | tee -a $OUT/call2_e2e_8b.log
done
