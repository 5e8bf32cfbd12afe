# Run 28 call 5: GPU tests of the fresh path; pp8192 end to end with FORGE_ATTN_FRESH 1 / 0
# (one process each, alternating) at Llama-3-8B, Gemma 3 1B and Llama-3.2-1B shapes, with the
# shipped table (d128: BLOCK_N_FRESH 128)
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/tc PYTHONUNBUFFERED=1
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_attention.py tests/kernels/test_rope.py -k "fresh or k_out" 2>&1 | tail -3 | tee $OUT/call5_tests.log
e2e() {  # shape, pairs, order
  for i in $(seq $2); do for f in $3; do
    FORGE_ATTN_FRESH=$f timeout 150 python3 -m forge.cli bench --synthetic $1 --quant Q4_K_M -p 8192 -n 2 -r 3 > /tmp/b.log 2>&1
    echo "== $1 fresh=$f" >> $OUT/call5_e2e.log; cat /tmp/b.log >> $OUT/call5_e2e.log
    grep "pp8192" /tmp/b.log | sed "s/^/$1 fresh=$f /"
  done; done
}
e2e gemma3-1b 2 "0 1"
e2e llama3.2-1b 2 "0 1"
e2e llama3-8b 1 "0 1"
