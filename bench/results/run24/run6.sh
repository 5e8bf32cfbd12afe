#!/bin/bash
# Session 20 (run 24), H100 call 6: the per-process bimodality of end-to-end prefill (run 23:
# pp512 @ d4096 on a Gemma 3 1B-shaped Q4_K_M model, 69-86k tok/s by process). Six fresh
# processes of the same bench (prefill graphs on), two with --no-prefill-graphs, nvidia-smi
# dmon (SM / memory clocks, power) sampled all along.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
nvidia-smi dmon -s pucm -d 1 > $OUT/dmon.log 2>&1 &
DMON=$!
run() {  # label, extra flags
  echo "$(date +%T) start $1" >> $OUT/dmon.log
  timeout 150 python3 -m forge.cli bench --synthetic gemma3-1b --quant Q4_K_M -p 512 -n 4 -r 6 \
    -d 4096 $2 --json /tmp/e2e_$1.json 2>&1 | grep -E "\| pp" | sed "s/^/$1: /"
  python3 -c "import json,statistics as s; d=json.load(open('/tmp/e2e_$1.json')); print('$1 pp reps', [round(x) for x in d['pp_tps']])"
  echo "$(date +%T) end $1" >> $OUT/dmon.log
}
for i in 1 2 3 4 5 6; do run g$i ""; done 2>&1 | tee $OUT/e2e.log
for i in 1 2; do run e$i --no-prefill-graphs; done 2>&1 | tee -a $OUT/e2e.log
kill $DMON
