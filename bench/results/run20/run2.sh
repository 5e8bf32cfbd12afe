#!/bin/bash
# Session 16, H100 call 2: the Q8_0 grid refined around call 1's winners (two passes), the
# choice per 8B shape (pick.py), 8B Q8_0 decode with those entries on / off (a user table),
# interleaved; the Q4_K table re-timed (a27cc26); the tuning sweep test that failed in call 1.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
F="^nanobind\| - leaked\|UserWarning\|warn_once"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_tuning.py -k sweep_on_the_gpu 2>&1 | tail -2
G=2:2:3:1,2:2:4:1,2:2:5:1,2:2:6:1,4:2:3:1,4:2:4:1,4:2:5:1,4:2:6:1,2:4:4:1,4:4:4:1,2:4:3:1,4:2:4:0,2:2:4:0,1:4:6:1,1:2:6:1,2:8:4:1,4:1:6:1,2:1:6:1
for p in 1 2; do
  timeout 150 python3 bench/gluon_gemv.py --type Q8_0 --json "$OUT/grid_q8_r$p.json" --grid $G 2>&1 | grep -v "$F" | grep -v "^  " 
done
python3 bench/results/run20/pick.py /tmp/on.json "$OUT"/grid_q8_r*.json
cp /tmp/on.json "$OUT/on_table.json"
for i in 1 2; do
  for mode in on off; do
    if [ $mode = on ]; then export FORGE_TUNING_TABLE=/tmp/on.json; else unset FORGE_TUNING_TABLE; fi
    timeout 150 python3 -m forge.cli bench --synthetic llama3-8b --quant Q8_0 -p 512 -n 128 -r 3 \
      --json "$OUT/e2e_${mode}_$i.json" 2>&1 | grep -i "tg\|pp" | tail -2 | sed "s/^/$mode $i: /"
  done
done
unset FORGE_TUNING_TABLE
timeout 100 python3 bench/gluon_gemv.py --type Q4_K --shapes 4096x14336,14336x4096,4096x4096 \
  --json "$OUT/q4k_table.json" --grid 2:1:4:1 2>&1 | grep -v "$F"
