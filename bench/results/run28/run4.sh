# Run 28 call 4: registers of the variants with the fresh path's own tiles; fresh-path tile
# sweeps at d128 / d64 / d256 (whole prompts); the d128 prefill table with the shipped entry
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/tc PYTHONUNBUFFERED=1
R=bench/results/run28
timeout 120 python3 $R/regs.py 2>&1 | tee $OUT/call4_regs.log
timeout 100 python3 bench/bench_attention.py --sweep prefill --fresh --cases 2048@0,8192@0,32768@0 --grid "BLOCK_M=128 num_warps=8 num_stages=3 BLOCK_N=64 BLOCK_N_FRESH=64,128" 2>&1 | tee $OUT/call4_sweep_d128.log
timeout 100 python3 bench/bench_attention.py --sweep prefill --fresh --heads 32:8:64 --cases 2048@0,8192@0 --grid "BLOCK_M=64 num_warps=4 num_stages=3 BLOCK_N=128 BLOCK_N_FRESH=64,128" 2>&1 | tee $OUT/call4_sweep_d64.log
timeout 100 python3 bench/bench_attention.py --sweep prefill --fresh --heads 4:1:256 --cases 2048@0,8192@0 --grid "BLOCK_M=64 num_warps=8 num_stages=3 BLOCK_N=64 BLOCK_N_FRESH=32,64" 2>&1 | tee $OUT/call4_sweep_d256.log
timeout 120 python3 bench/bench_attention.py --only prefill 2>&1 | tee $OUT/call4_prefill_d128.log
