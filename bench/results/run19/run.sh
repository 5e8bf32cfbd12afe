#!/bin/bash
# Session 15, one H100 call: the shared-memory Q4_K GEMV (forge/kernels/gemv_async.py).
# GPU tests, its launch grid at the 8B shapes, the GEMV floor bench on the table as shipped,
# and 8B Q4_K_M decode with the ASYNC entries on / off (a user table with ASYNC 0), interleaved.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import triton, torch; print('triton', triton.__version__, 'torch', torch.__version__)"
timeout 200 python3 -m pytest -q -p no:cacheprovider -x tests/kernels/test_gemv_async.py \
  tests/kernels/test_sampling.py tests/kernels/test_tuning.py 2>&1 | tail -3
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_matmul.py \
  -k "int8 or xpre or producers or llama_gemv or even_rows" 2>&1 | tail -3
timeout 200 python3 bench/gluon_gemv.py --json "$OUT/grid.json" \
  --grid 2:1:3:1,2:1:4:1,2:1:6:1,2:1:4:0,2:2:3:1,2:2:4:1,2:2:2:0,4:1:4:1,4:1:3:1,4:2:4:1,1:2:4:1 \
  2>&1 | grep -v "^nanobind\| - leaked\|UserWarning\|warn_once"
timeout 150 python3 bench/bench_gemv_floor.py --no-variants --types Q4_K --json "$OUT/floor.json" \
  2>&1 | grep -v "^nanobind\| - leaked\|UserWarning\|warn_once" | tail -12
python3 - <<'PY'
import json
d = json.load(open("forge/kernels/configs/sm90.json"))
e = {b: dict(v, ASYNC=0) for b, v in d["kernels"]["linear_gemv.Q4_K"].items() if v.get("ASYNC")}
json.dump({"arch": "sm90", "kernels": {"linear_gemv.Q4_K": e}}, open("/tmp/off.json", "w"))
PY
for i in 1; do
  for mode in on off; do
    if [ $mode = off ]; then export FORGE_TUNING_TABLE=/tmp/off.json; else unset FORGE_TUNING_TABLE; fi
    timeout 150 python3 -m forge.cli bench --synthetic llama3-8b --quant Q4_K_M -p 512 -n 128 -r 3 \
      --json "$OUT/e2e_${mode}_$i.json" 2>&1 | grep -i "tg\|pp" | tail -2 | sed "s/^/$mode $i: /"
  done
done
