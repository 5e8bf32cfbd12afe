# Run 28 call 7, after the reread: GPU tests of attention's fresh path and the rope (all of
# test_rope, GPU-marked included); forge bench Llama-3.2-1B Q4_K_M at pp8192 and pp512 / tg128
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/tc PYTHONUNBUFFERED=1
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_rope.py tests/kernels/test_attention.py -k "fresh or k_out or rope" 2>&1 | tail -2 | tee $OUT/call7_tests.log
timeout 100 python3 -m forge.cli bench --synthetic llama3.2-1b --quant Q4_K_M -p 8192 -n 2 -r 3 > $OUT/call7_bench_pp8192.log 2>&1; grep "pp8192" $OUT/call7_bench_pp8192.log
timeout 100 python3 -m forge.cli bench --synthetic llama3.2-1b --quant Q4_K_M -p 512 -n 128 -r 3 > $OUT/call7_bench_1b.log 2>&1; grep "pp512\|tg128" $OUT/call7_bench_1b.log
