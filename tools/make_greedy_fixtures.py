"""Record llama.cpp's greedy continuations of a few prompts as test fixtures.

Run with a Python that has llama-cpp-python (not a forge dependency; CI never runs this):
    python tools/make_greedy_fixtures.py MODEL.gguf NAME
writes tests/fixtures/greedy_NAME.json with, per prompt, llama.cpp's prompt token ids, its first
16 greedy tokens, their text and the top-5 logits of the first step; and, for the first two
prompts (5-6 and 18 tokens: ggml picks some kernels by batch size), llama.cpp's final normed
hidden state ("result_norm", the input of the output head) of the prompt and of the first decode
step, as float32 bits, for tests/models/test_greedy_llamacpp.py's bit-exact check.

llama.cpp settings (recorded in the JSON): flash attention off and an F32 KV cache, so attention
runs K.Q / softmax / P.V in float32 (forge's numerics="llamacpp" reproduces those kernels, not the
f16 flash-attention path); everything else default (weight repacking on, llamafile sgemm on). Each
prompt is evaluated alone: the whole prompt in one batch, then one token per step. The CPU
(x86-64 with AVX2, FMA and F16C here) decides which ggml kernels run, so regenerate on such a CPU.
"""
from __future__ import annotations

import base64
import ctypes
import json
import platform
import sys
from pathlib import Path

import numpy as np
import llama_cpp
import llama_cpp.llama_cpp as L
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
HIDDEN_FOR = (0, 1)        # prompts whose final hidden states are recorded
SETTINGS = dict(n_ctx=512, n_batch=512, flash_attn=False, type_k=0, type_v=0)   # 0 = GGML_TYPE_F32


class _Tensor(ctypes.Structure):
    """The head of ggml.h's struct ggml_tensor, up to `name` (layout of ggml 0.9.x)."""

    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64)]


class _Capture:
    """An eval callback that copies the tensor named `name` (F32, contiguous) when armed."""

    def __init__(self, name: str):
        self.name, self.armed, self.value = name.encode(), False, None
        self.cb = L.ggml_backend_sched_eval_callback(self._cb)

    def _cb(self, tp, ask, _user):
        t = ctypes.cast(tp, ctypes.POINTER(_Tensor)).contents
        if ask:
            return t.name == self.name
        if self.armed and t.name == self.name and t.type == 0:
            n = int(np.prod(list(t.ne)))
            buf = (ctypes.c_float * n).from_address(t.data)
            self.value = np.frombuffer(buf, np.float32).copy().reshape(-1, t.ne[0])
        return True


def _bits(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, np.float32).tobytes()).decode()


def main(path: str, name: str) -> None:
    cap = _Capture("result_norm")
    default_params = L.llama_context_default_params

    def params_with_callback():
        p = default_params()
        p.cb_eval, p.cb_eval_user_data = cap.cb, None
        return p

    L.llama_context_default_params = params_with_callback
    llm = Llama(model_path=path, logits_all=True, verbose=False, seed=0, n_threads=2, **SETTINGS)
    cases = []
    hidden = []
    for i, p in enumerate(PROMPTS):
        ids = llm.tokenize(p.encode(), add_bos=True, special=True)
        llm.reset()
        cap.armed = i in HIDDEN_FOR
        llm.eval(ids)
        prompt_hidden = cap.value
        first = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        top = np.argsort(-first)[:5]
        out = []
        for step in range(N):
            logits = np.array(llm.scores[llm.n_tokens - 1])
            tok = int(np.argmax(logits))
            out.append(tok)
            llm.eval([tok])
            if i in HIDDEN_FOR and step == 0:
                hidden.append({"case": i, "prompt": _bits(prompt_hidden), "decode": _bits(cap.value),
                               "shape_prompt": list(prompt_hidden.shape),
                               "shape_decode": list(cap.value.shape)})
                cap.armed = False
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
    doc = {
        "model": Path(path).name,
        "n": N,
        "llama_cpp_python": llama_cpp.__version__,
        "settings": "flash_attn=False, type_k=type_v=F32, n_ctx=512, n_batch=512, n_threads=2, "
                    "weight repacking and llamafile sgemm on (defaults); each prompt alone",
        "system_info": L.llama_print_system_info().decode().strip(),
        "machine": platform.machine(),
        "result_norm": hidden,
        "cases": cases,
    }
    out_path.write_text(json.dumps(doc, indent=1, ensure_ascii=False))
    print("wrote", out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
