#!/bin/bash
# Session 19 (run 23), H100 call 3: two d256 entries with splits on (KV_SPLIT_MIN 256, the new
# launcher default): tA = the shipped 64x64 / 3 stages, tB = 128x64 / 2 stages / SINGLE_LOOP 1
# (call 2's tile sweep; its two-loop twin spills); nosplit = tA with KV_SPLITS 1.
# bench_attention at Gemma 3 heads per table, then Gemma 3 1B-shaped Q4_K_M end to end
# (5 of 6 layers slide over 512 tokens): pp512 at depth 0 and 4096, pp2048 at depth 0.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
F="^nanobind\| - leaked\|UserWarning\|warn_once\|WARNING"
R=bench/results/run23
for t in tA_64x64 tB_128x64_sl; do
  echo "== $t"
  FORGE_TUNING_TABLE=$R/$t.json timeout 100 python3 bench/bench_attention.py --only prefill --heads 4:1:256 2>&1 | grep -v "$F"
done 2>&1 | tee $OUT/prefill_tables.log
run() {  # table depth prompt
  FORGE_TUNING_TABLE=$R/$1.json timeout 100 python3 -m forge.cli bench --synthetic gemma3-1b \
    --quant Q4_K_M -p $3 -n 4 -r 3 -d $2 --json $OUT/e2e_$1_p$3_d$2.json 2>&1 | grep -E "\| pp" \
    | sed "s/^/$1 p$3 d$2: /"
}
{
for d in 4096 0; do for t in nosplit_table tA_64x64 tB_128x64_sl; do run $t $d 512; done; done
run tA_64x64 0 2048; run tB_128x64_sl 0 2048
} 2>&1 | tee $OUT/e2e.log
