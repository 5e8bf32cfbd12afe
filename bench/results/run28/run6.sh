# Run 28 call 6 (final tree): GPU tests of attention's fresh path and the rope's k_out, engine /
# precompile / prefill graphs; forge bench Llama-3.2-1B Q4_K_M pp512 / tg128 next to run 27's;
# GPU/CPU parity
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/tc PYTHONUNBUFFERED=1
timeout 110 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_attention.py tests/kernels/test_rope.py -k "fresh or k_out" 2>&1 | tail -2 | tee $OUT/call6_tests.log
timeout 110 python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels/test_precompile.py tests/runtime/test_engine.py tests/runtime/test_prefill_graphs.py 2>&1 | tail -3 | tee -a $OUT/call6_tests.log
timeout 90 python3 -m forge.cli bench --synthetic llama3.2-1b --quant Q4_K_M -p 512 -n 128 -r 3 > $OUT/call6_bench_1b.log 2>&1; grep "pp512\|tg128\|load:" $OUT/call6_bench_1b.log
timeout 270 python3 -m pytest -q -p no:cacheprovider tests/models/test_gpu_cpu_parity.py 2>&1 | tail -3 | tee $OUT/call6_parity.log
