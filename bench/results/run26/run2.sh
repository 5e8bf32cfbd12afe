#!/bin/bash
# Session 22 (run 26), H100 calls 2-3: PDL on every launch (the default now) against
# FORGE_PDL=decode (the earlier policy: decode graphs only), same tree, interleaved
# all / decode / all / decode. forge bench pp512 + tg128 with prefill graphs, then pp512 eager
# (--no-prefill-graphs). argv: shape.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TRITON_CACHE_DIR=/tmp/triton-cache
S=$1
run() {  # mode label extra...
  m=$1; l=$2; shift 2
  FORGE_PDL=$([ $m = all ] && echo 1 || echo decode) timeout 240 python3 -m forge.cli bench \
    --synthetic $S --quant Q4_K_M -r 3 --json $OUT/e2e_${S}_${l}_$m.json "$@" 2>&1 \
    | grep -E "\| (pp|tg)" | sed "s/^/$S $l $m: /"
}
{ for m in all decode all decode; do run $m graphs -p 512 -n 128; done
  for m in all decode all decode; do run $m eager -p 512 -n 8 --no-prefill-graphs; done; } | tee $OUT/pdl_ab_$S.log
