"""`forge check MODEL`: run one prompt through the CPU and the GPU backends and compare the
hidden state after every layer. The first layer whose relative difference exceeds the tolerance
is named: the tool for debugging a new architecture or quant type on the GPU path."""
from __future__ import annotations

import numpy as np

from forge.errors import ForgeError


def compare_backends(model: str, prompt: str, tol: float, devices=("cpu", "gpu"),
                     engine_kwargs: dict | None = None) -> tuple[list[tuple[str, float]], int | None, dict]:
    from forge.runtime.engine import Engine

    kw = dict(max_model_len=1024, kv_cache_tokens=2048, **(engine_kwargs or {}))
    states: dict[str, dict[int, np.ndarray]] = {}
    logits = {}
    ids = None
    for dev in devices:
        eng = Engine(model, device=dev, **kw)
        if ids is None:
            ids = eng.tokenizer.encode(prompt, add_special=True)
        got: dict[int, np.ndarray] = {}

        def trace(i, h, got=got, eng=eng):
            got[i] = np.asarray(eng.backend.to_numpy(h), dtype=np.float64)

        logits[dev] = eng.model_logits(ids, trace=trace).astype(np.float64)
        states[dev] = got
        n_layers = eng.cfg.num_layers
        del eng
    a, b = (states[d] for d in devices)
    rows: list[tuple[str, float]] = []
    first_bad = None
    for i in sorted(a):
        name = "embedding" if i == -1 else ("final norm" if i == n_layers else f"layer {i}")
        rel = float(np.abs(a[i] - b[i]).max() / max(np.abs(a[i]).max(), 1e-30))
        rows.append((name, rel))
        if first_bad is None and rel > tol:
            first_bad = len(rows) - 1
    la, lb = (logits[d] for d in devices)
    rel = float(np.abs(la - lb).max() / max(np.abs(la).max(), 1e-30))
    rows.append(("logits", rel))
    if first_bad is None and rel > tol:
        first_bad = len(rows) - 1
    agree = float(np.mean(la.argmax(-1) == lb.argmax(-1)))
    return rows, first_bad, {"tokens": len(ids), "argmax_agreement": agree}


def run_check(a) -> int:
    try:
        import torch
    except ImportError:
        raise ForgeError("forge check needs torch and a GPU (pip install 'forge-llm[gpu]')") from None
    if not torch.cuda.is_available():
        raise ForgeError("forge check compares the CPU and GPU backends, but torch sees no GPU")
    rows, bad, info = compare_backends(a.model_path, a.prompt, a.tol)
    print(f"prompt: {info['tokens']} tokens; per-position argmax agreement "
          f"{100 * info['argmax_agreement']:.1f}%")
    print("| stage | max rel diff | |")
    print("| --- | ---: | --- |")
    for j, (name, rel) in enumerate(rows):
        mark = "FIRST DIVERGENCE" if j == bad else ("over tol" if rel > a.tol else "")
        print(f"| {name} | {rel:.3e} | {mark} |")
    if bad is not None:
        print(f"\nfirst stage beyond tolerance {a.tol:g}: {rows[bad][0]}")
        return 1
    print(f"\nall stages within tolerance {a.tol:g}")
    return 0
