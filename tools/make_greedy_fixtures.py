"""Record llama.cpp's greedy continuations of a few prompts as test fixtures.

Run with a Python that has llama-cpp-python (not a forge dependency; CI never runs this):
    python tools/make_greedy_fixtures.py MODEL.gguf NAME
writes tests/fixtures/greedy_NAME.json with, per prompt, llama.cpp's prompt token ids, its first
16 greedy tokens, their text, and the top-5 logits of the first step.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import llama_cpp
from llama_cpp import Llama

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea,",
    "Q: What is 12 times 7?\nA:",
    "Les fleurs du printemps sont",
    "List three colors:\n1.",
]
N = 16


def main(path: str, name: str) -> None:
    # f32 KV cache and no flash attention: llama.cpp's attention then runs in f32, so the
    # remaining numerical differences are its activation quantization (which forge's CPU
    # backend reproduces) rather than f16 rounding inside its attention kernel.
    llm = Llama(model_path=path, n_ctx=512, n_batch=512, logits_all=True, verbose=False, seed=0,
                n_threads=2, flash_attn=False, type_k=0, type_v=0)
    cases = []
    for p in PROMPTS:
        ids = llm.tokenize(p.encode(), add_bos=True, special=True)
        llm.reset()
        llm.eval(ids)
        first = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        top = np.argsort(-first)[:5]
        out = []
        for _ in range(N):
            logits = np.array(llm.scores[llm.n_tokens - 1])
            tok = int(np.argmax(logits))
            out.append(tok)
            llm.eval([tok])
        cases.append({
            "prompt": p,
            "prompt_ids": ids,
            "greedy_ids": out,
            "text": llm.detokenize(out).decode("utf-8", errors="replace"),
            "top5_ids": top.tolist(),
            "top5_logits": first[top].tolist(),
        })
        print(repr(p), "->", repr(cases[-1]["text"]))
    out_path = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / f"greedy_{name}.json"
    out_path.write_text(json.dumps({"model": Path(path).name, "n": N, "llama_cpp_python": llama_cpp.__version__,
                                    "settings": "flash_attn=False, type_k=type_v=F32, n_threads=2",
                                    "cases": cases}, indent=1,
                                   ensure_ascii=False))
    print("wrote", out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
