#!/bin/bash
# Session 18 (run 22), H100 call 8: the sm90 attn_prefill entries end to end: pp512 at depth 0
# and 4096 with the shipped table against old_prefill_table.json (the launcher defaults the
# entries replace, the whole section), interleaved; Llama-3.2 1B (d64) and Gemma 3 1B (d256)
# Q4_K_M; 8B pp512 at depth 0 (its entry is the old default: a check that nothing moved).
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
R=bench/results/run22
run() {  # shape depth side
  if [ $3 = old ]; then export FORGE_TUNING_TABLE=$R/old_prefill_table.json; else unset FORGE_TUNING_TABLE; fi
  timeout 110 python3 -m forge.cli bench --synthetic $1 --quant Q4_K_M -p 512 -n 8 -r 3 -d $2 \
    --json $OUT/e2e_$1_d$2_$3.json 2>&1 | grep -E "\| pp" | sed "s/^/$1 d$2 $3: /"
}
for shape in llama3.2-1b gemma3-1b; do
  for d in 0 4096; do run $shape $d new; run $shape $d old; done
done
run llama3-8b 0 new
