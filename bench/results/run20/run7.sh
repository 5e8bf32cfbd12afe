#!/bin/bash
# Session 16, H100 call 7: clean end-to-end A/Bs. A user table that holds a kernel serves every
# bucket of it (nearest bucket), so calls 2 and 5 compared more than the buckets they meant to.
# Here each user table is the whole shipped section with only the buckets in question changed:
# - Q8_0: shipped (five ASYNC entries) vs q8_off_full.json (the same, ASYNC 0), two rounds;
# - Q4_K_M: shipped (BN 8 at qkv / down) vs q4_prev_full.json (the entries before) vs
#   q4_pick_full.json (call 6's sweep pick for down: ASYNC 3 BN 4 W 2), one round.
# First one more timing of that pick's neighbours at 4096x14336.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
F="^nanobind\| - leaked\|UserWarning\|warn_once"
R=bench/results/run20
timeout 100 python3 bench/gluon_gemv.py --type Q4_K --shapes 4096x14336 --json "$OUT/down.json" \
  --grid 4:2:3:1,8:2:3:1,2:2:4:1,4:2:4:1,4:1:3:1 2>&1 | grep -v "$F"
run() {  # quant mode table round
  if [ "$3" = - ]; then unset FORGE_TUNING_TABLE; else export FORGE_TUNING_TABLE=$PWD/$R/$3; fi
  timeout 100 python3 -m forge.cli bench --synthetic llama3-8b --quant $1 -p 512 -n 128 -r 3 \
    --json "$OUT/e2e_${1}_${2}_$4.json" 2>&1 | grep -i "tg128" | tail -1 | sed "s/^/$1 $2 $4: /"
}
for i in 1 2; do run Q8_0 shipped - $i; run Q8_0 off q8_off_full.json $i; done
run Q4_K_M shipped - 1; run Q4_K_M prev q4_prev_full.json 1; run Q4_K_M pick q4_pick_full.json 1
