#!/bin/bash
# Session 17, H100 call 8: the same decode sweep at Llama-3.2-1B heads (32:8, d 64: bucket
# d64_g4, which keeps the launcher's split scheme), then the best geometric-mean entry in the
# 1B Q4_K_M model at depth 0 and 4096 (pick_d64.json: the whole attn_decode section with d64_g4
# = ROPE_MIN_B 1 + the pick) against the shipped table, interleaved.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
F="^nanobind\| - leaked\|UserWarning\|warn_once"
R=bench/results/run21
timeout 240 python3 bench/bench_attention.py --sweep decode --heads 32:8:64 --top 20 \
  --cases 1x512x8192,1x1024x8192,1x4096x8192,1x32768x32768,32x512x8192,32x4096x4096 \
  --grid "SPLITS_PER_CU=1,2,4 MAX_SPLITS=16,32,64 FUSED_REDUCE=0,1 num_stages=2,3,4 BLOCK_N=64,128" \
  2>&1 | grep -v "$F" | tee "$OUT/sweep_d64.log" | tail -12
python3 - "$OUT/sweep_d64.log" "$OUT/pick_d64.json" <<'PY'
import json, sys
line = [l for l in open(sys.argv[1]) if l.startswith("best attn_decode entry")][-1]
pick = json.loads(line.split(": ", 1)[1])
d = json.load(open("forge/kernels/configs/sm90.json"))
sec = d["kernels"]["attn_decode"]
sec["d64_g4"] = dict(ROPE_MIN_B=sec["d64_g4"]["ROPE_MIN_B"], **pick)
json.dump({"arch": "sm90", "kernels": {"attn_decode": sec}}, open(sys.argv[2], "w"), indent=1)
print("pick", sec["d64_g4"])
PY
for d in 4096 0; do
  for m in shipped pick shipped pick; do
    if [ $m = shipped ]; then unset FORGE_TUNING_TABLE; else export FORGE_TUNING_TABLE=$OUT/pick_d64.json; fi
    timeout 90 python3 -m forge.cli bench --synthetic llama3.2-1b --quant Q4_K_M -p 512 -n 128 -r 3 -d $d \
      --json "$OUT/e2e1b_d${d}_${m}_$RANDOM.json" 2>&1 | grep -E "\| tg" | sed "s/^/d$d $m: /"
  done
done
