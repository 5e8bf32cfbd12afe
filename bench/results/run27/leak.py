"""Run 27: is a dropped GPU engine freed? Loads tiny-llama twice (compile ahead off, then on),
drops each, collects, and prints whether it is still alive and, if so, who holds it (three
levels of gc referrers) and the memory torch still has allocated."""
import gc
import os
import sys
import types
import weakref

import torch

from forge.runtime.engine import Engine
from forge.sampling import SamplingParams
from forge.testing.synthetic import write_synthetic

path = "/tmp/tl.gguf"
write_synthetic(path, "tiny-llama", "Q4_K_M", seed=1)


def describe(o):
    if isinstance(o, dict):
        keys = list(o)[:6]
        return f"dict keys={keys}"
    if isinstance(o, types.FrameType):
        return f"frame {o.f_code.co_filename}:{o.f_lineno} {o.f_code.co_name}"
    if isinstance(o, types.FunctionType):
        return f"function {o.__qualname__} ({o.__module__})"
    if isinstance(o, types.CellType):
        return "cell"
    return f"{type(o).__module__}.{type(o).__qualname__}"


for threads in sys.argv[1].split(","):
    os.environ["FORGE_COMPILE_THREADS"] = threads
    eng = Engine(path, device="gpu", max_model_len=1024, max_num_batched_tokens=1024, max_num_seqs=8,
                 kv_cache_tokens=200000)
    eng.add_request(list(range(5, 60)), SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    while eng.has_unfinished():
        eng.step()
    r = weakref.ref(eng)
    del eng
    gc.collect()
    print(f"threads {threads}: alive after del+collect: {r() is not None}; "
          f"allocated {torch.cuda.memory_allocated() / 2**20:.0f} MiB", flush=True)
    if r() is not None:
        seen = set()
        level = [r()]
        for depth in range(4):
            nxt = []
            for obj in level:
                for ref in gc.get_referrers(obj):
                    if ref is level or id(ref) in seen or isinstance(ref, list) and ref is nxt:
                        continue
                    seen.add(id(ref))
                    print("  " * (depth + 1) + describe(ref))
                    nxt.append(ref)
            level = nxt[:12]
        break
