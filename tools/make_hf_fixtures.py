"""Write transformers reference logits for synthetic GGUF models: tests/fixtures/hf_<shape>_<quant>.npz.

For each (shape, quant) this writes the synthetic GGUF (forge.testing.synthetic, fixed seed), loads it
with transformers' GGUF loader (`AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`, float32,
CPU), runs a fixed 12-token sequence and saves:

    logits      float32 [T, vocab]   full-prompt logits
    token_ids   int64 [T]
    shape, quant, seed, gguf_sha256, transformers_version, torch_version, hf_config_overrides (json)

tests/models/test_hf_parity.py rewrites the GGUF with the same seed, checks its sha256 (so the writer
is deterministic) and compares forge's logits (and a float64 NumPy reference) with these.

transformers and torch are not forge dependencies: run this from a separate venv that has them
(plus gguf, numpy, tqdm, accelerate), from the repository root:

    /work/hfvenv/bin/python tools/make_hf_fixtures.py            # all fixtures
    /work/hfvenv/bin/python tools/make_hf_fixtures.py --shape tiny-qwen3 --quant F32
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from forge.testing.synthetic import resolve_shape, write_synthetic  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
SEED = 0
NUM_TOKENS = 12
DEFAULT = [
    ("tiny-llama", "F32"), ("tiny-llama", "F16"), ("tiny-llama", "Q4_K_M"),
    ("tiny-qwen2", "F32"), ("tiny-qwen2", "F16"), ("tiny-qwen2", "Q4_K_M"),
    ("tiny-qwen3", "F32"), ("tiny-qwen3", "F16"),
    ("tiny-gemma3", "F32"), ("tiny-gemma3", "F16"),
]


def token_ids_for(shape: str) -> list[int]:
    """The fixed test sequence: BOS then 11 ids drawn from the vocabulary with a fixed seed."""
    from forge.testing.synthetic import make_vocab

    s = resolve_shape(shape)
    v = make_vocab(s)
    rng = np.random.default_rng(1234)
    rest = rng.integers(0, s.vocab_size, NUM_TOKENS - 1).tolist()
    return [v.bos_id] + [int(t) for t in rest]


def hf_config_overrides(shape: str) -> dict:
    s = resolve_shape(shape)
    if s.arch == "gemma3":
        # transformers' GGUF loader leaves Gemma3's query_pre_attn_scalar at its default 256;
        # llama.cpp (and forge) scale scores by 1/sqrt(head_dim), which is what the real 1B/4B/12B
        # models use (their head_dim is 256).
        return {"query_pre_attn_scalar": s.hd}
    return {}


def make(shape: str, quant: str, out_dir: Path) -> Path:
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as td:
        path = write_synthetic(Path(td) / f"{shape}-{quant}.gguf", shape, quant, seed=SEED, progress=False)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        overrides = hf_config_overrides(shape)
        config = AutoConfig.from_pretrained(td, gguf_file=path.name)
        for k, v in overrides.items():
            setattr(config, k, v)
        model = AutoModelForCausalLM.from_pretrained(td, gguf_file=path.name, config=config, dtype=torch.float32)
        model.eval()
        ids = token_ids_for(shape)
        with torch.no_grad():
            logits = model(torch.tensor([ids]), use_cache=False).logits[0].float().numpy()
    if not np.isfinite(logits).all():
        raise RuntimeError(f"{shape} {quant}: transformers produced non-finite logits")
    out = out_dir / f"hf_{shape}_{quant}.npz"
    np.savez_compressed(
        out, logits=logits.astype(np.float32), token_ids=np.array(ids, dtype=np.int64),
        shape=np.array(shape), quant=np.array(quant), seed=np.array(SEED), gguf_sha256=np.array(sha),
        transformers_version=np.array(transformers.__version__), torch_version=np.array(torch.__version__),
        hf_config_overrides=np.array(json.dumps(overrides)),
    )
    print(f"{out.relative_to(ROOT)}: logits {logits.shape} std {logits.std():.3f} sha256 {sha[:16]}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", help="only this shape")
    p.add_argument("--quant", help="only this quant")
    p.add_argument("--out", type=Path, default=FIXTURES)
    a = p.parse_args(argv)
    todo = [(s, q) for s, q in DEFAULT if (a.shape in (None, s)) and (a.quant in (None, q))]
    if a.shape and a.quant and not todo:
        todo = [(a.shape, a.quant)]
    a.out.mkdir(parents=True, exist_ok=True)
    for shape, quant in todo:
        make(shape, quant, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
