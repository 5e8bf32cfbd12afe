#!/bin/bash
# Session 17, H100 call 7: is call 6's pp512 @ d4096 gap (new decode entry 2.7% lower) the
# prefill's own time, or what the decode between repetitions leaves behind? The same A/B with
# -n 2 (one decode step between prefills), three rounds interleaved, then -n 128 once more.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
R=bench/results/run21
for n in 2 2 2 128; do
  for m in old new; do
    if [ $m = new ]; then unset FORGE_TUNING_TABLE; else export FORGE_TUNING_TABLE=$PWD/$R/attn_A.json; fi
    timeout 100 python3 -m forge.cli bench --synthetic llama3-8b --quant Q4_K_M -p 512 -n $n -r 5 -d 4096 \
      --json "$OUT/ppn${n}_${m}_$RANDOM.json" 2>&1 | grep -E "\| (pp|tg)" | sed "s/^/n$n $m: /"
  done
done
