"""`forge info MODEL`: metadata, tensor types and the memory a model needs."""
from __future__ import annotations

from collections import defaultdict

from forge import hub
from forge.loader.config import ModelConfig
from forge.loader.reader import GGUFFile


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def describe(model: str) -> str:
    path = hub.resolve(model)
    f = GGUFFile(path)
    cfg = ModelConfig.from_gguf(f)
    lines = [f"file          {path} ({_gib(f.file_size)}, GGUF v{f.version})",
             f"name          {cfg.name}",
             f"architecture  {cfg.arch}"]
    lines += [
        f"layers        {cfg.num_layers}   hidden {cfg.hidden_size}   ffn {cfg.intermediate_size}",
        f"heads         {cfg.num_heads} q / {cfg.num_kv_heads} kv, head dim {cfg.head_dim}"
        + (f" (v {cfg.v_head_dim})" if cfg.v_head_dim != cfg.head_dim else ""),
        f"vocab         {cfg.vocab_size}   context {cfg.context_length}",
        f"rope          {cfg.rope_style}, base {cfg.rope_base:g}, dims {cfg.rope_dim}"
        + (f", local base {cfg.rope_base_local:g}" if cfg.rope_base_local else "")
        + (f", freq scale {cfg.rope_freq_scale:g}" if cfg.rope_freq_scale != 1 else ""),
    ]
    if cfg.sliding_window:
        n_slide = sum(cfg.sliding_layers)
        lines.append(f"sliding       window {cfg.sliding_window} on {n_slide} of {cfg.num_layers} layers")
    extras = [k for k, v in (("qkv bias", cfg.qkv_bias), ("qk norm", cfg.qk_norm),
                             ("sandwich norms", cfg.post_norms), ("tied embeddings", cfg.tied_embeddings),
                             ("rope_freqs", cfg.has_rope_freqs)) if v]
    if cfg.final_softcap:
        extras.append(f"final softcap {cfg.final_softcap:g}")
    lines.append(f"features      {', '.join(extras) or '-'}   activation {cfg.act}")
    tok_model = f.get("tokenizer.ggml.model", "?")
    lines.append(f"tokenizer     {tok_model} (pre {f.get('tokenizer.ggml.pre', '-')}), "
                 f"chat template {'yes' if f.get('tokenizer.chat_template') else 'no'}")

    by_type: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    n_params = 0
    for t in f.tensors.values():
        n = 1
        for d in t.shape:
            n *= int(d)
        by_type[t.type_name][0] += 1
        by_type[t.type_name][1] += n
        by_type[t.type_name][2] += t.n_bytes
        n_params += n
    lines.append(f"parameters    {n_params / 1e6:.1f} M")
    lines.append("tensor types  " + ", ".join(
        f"{k} x{v[0]} ({_gib(v[2])}, {8 * v[2] / max(v[1], 1):.2f} bits/weight)"
        for k, v in sorted(by_type.items(), key=lambda kv: -kv[1][2])))
    weight_bytes = sum(v[2] for v in by_type.values())
    f32_bytes = 4 * n_params
    kv_per_tok = cfg.num_layers * cfg.num_kv_heads * (cfg.head_dim + cfg.v_head_dim)
    ctx = cfg.context_length
    lines.append("memory")
    lines.append(f"  GPU weights (kept quantized)      {_gib(weight_bytes)}")
    lines.append(f"  CPU weights (dequantized to f32)  {_gib(f32_bytes)}"
                 " (above FORGE_CPU_MAX_F32_GB, the rest stays quantized)")
    lines.append(f"  KV cache per token                {kv_per_tok * 2 / 1024:.1f} KiB f16 / "
                 f"{kv_per_tok * 4 / 1024:.1f} KiB f32")
    lines.append(f"  KV cache for the full context     {_gib(kv_per_tok * 2 * ctx)} f16 ({ctx} tokens)")
    return "\n".join(lines)
