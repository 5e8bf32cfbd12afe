# Run 28 call 1: the whole-prompt TMA path of prefill attention (attention(..., fresh=)), H100
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/tc PYTHONUNBUFFERED=1
R=bench/results/run28
timeout 120 python3 $R/regs.py 2>&1 | tee $OUT/call1_regs.log
timeout 150 python3 bench/bench_attention.py --only prefill 2>&1 | tee $OUT/call1_prefill_d128.log
timeout 90 python3 bench/bench_attention.py --only prefill --heads 32:8:64 --cases 512@0,2048@0,8192@0 2>&1 | tee $OUT/call1_prefill_d64.log
timeout 90 python3 bench/bench_attention.py --only prefill --heads 4:1:256 --cases 512@0,2048@0,8192@0 2>&1 | tee $OUT/call1_prefill_d256.log
timeout 140 python3 bench/bench_attention.py --sweep prefill --fresh --grid "BLOCK_M=128 num_warps=8 BLOCK_N=64,128 num_stages=2,3,4" 2>&1 | tee $OUT/call1_sweep_fresh.log
