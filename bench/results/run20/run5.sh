#!/bin/bash
# Session 16, H100 call 5: GPU tests after the BN 8 entries; 8B Q4_K_M decode with the shipped
# table (qkv 6144x4096 BN 8 W 1 S 4, ffn_down 4096x14336 BN 8 W 2 S 3) against the previous two
# entries (prev_q4k_table.json as the user table), interleaved, two rounds.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_gemv_async.py \
  tests/kernels/test_tuning.py 2>&1 | tail -3
for i in 1 2; do
  for mode in new prev; do
    if [ $mode = prev ]; then export FORGE_TUNING_TABLE=$PWD/bench/results/run20/prev_q4k_table.json; else unset FORGE_TUNING_TABLE; fi
    timeout 150 python3 -m forge.cli bench --synthetic llama3-8b --quant Q4_K_M -p 512 -n 128 -r 3 \
      --json "$OUT/e2e_q4km_${mode}_$i.json" 2>&1 | grep -i "tg\|pp" | tail -2 | sed "s/^/$mode $i: /"
  done
done
