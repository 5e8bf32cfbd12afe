# Run 28 call 3: GPU tests of the fresh path (tests/kernels, -k fresh / k_out); pp8192 end to end
# with FORGE_ATTN_FRESH 1 / 0 (one process each) at Llama-3-8B, Gemma 3 1B and Llama-3.2-1B
# shapes; the fresh path's tiles at d128 over 8192 and 32768 tokens
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/tc PYTHONUNBUFFERED=1
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_attention.py tests/kernels/test_rope.py -k "fresh or k_out" 2>&1 | tail -4 | tee $OUT/call3_tests.log
e2e() {  # shape, repeats
  for i in $(seq $2); do for f in 1 0; do
    FORGE_ATTN_FRESH=$f timeout 150 python3 -m forge.cli bench --synthetic $1 --quant Q4_K_M -p 8192 -n 2 -r 3 > /tmp/b.log 2>&1
    echo "== $1 fresh=$f" >> $OUT/call3_e2e.log; cat /tmp/b.log >> $OUT/call3_e2e.log
    grep "pp8192" /tmp/b.log | sed "s/^/$1 fresh=$f /"
  done; done
}
e2e llama3-8b 2
e2e gemma3-1b 1
e2e llama3.2-1b 1
timeout 150 python3 bench/bench_attention.py --sweep prefill --fresh --cases 8192@0,32768@0 --grid "BLOCK_M=128 num_warps=8 BLOCK_N=64,128 num_stages=2,3" 2>&1 | tee $OUT/call3_sweep.log
