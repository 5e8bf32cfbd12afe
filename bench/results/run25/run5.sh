#!/bin/bash
# Session 21 (run 25), H100 calls 5-6: what a first start compiles (call 6: with each compile's signature, constexprs and argument attributes) (compile_census.py), Gemma 3
# 1B-shaped Q4_K_M (max_model_len 16384), on an empty Triton cache; and whether the device's
# Triton has an async (parallel) compile mode.
pip install -q --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import triton; print('triton', triton.__version__)
import triton.runtime.jit as j; print('async compile mode:', hasattr(j, '_async_compile'))
import importlib.util; print('triton.runtime._async_compile:', importlib.util.find_spec('triton.runtime._async_compile') is not None)"
rm -rf /tmp/tc-census
TRITON_CACHE_DIR=/tmp/tc-census timeout 400 python3 bench/results/run25/compile_census.py gemma3-1b Q4_K_M gemma2 2>&1 | grep -v "^nanobind\| - leaked\|Warning\|warn\|gemma3-1b Q4_K_M:" | tee $OUT/census.log
