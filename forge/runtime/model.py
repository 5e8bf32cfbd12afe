"""Runs a ModelPlan over one ForwardBatch, calling only the backend's contract ops."""
from __future__ import annotations

from typing import Any, Callable

from forge.runtime.backend import ForwardBatch
from forge.runtime.plan import LayerPlan, ModelPlan

# trace(layer_index, hidden_state) is called after each layer with the residual stream
# ([T, hidden], backend array); layer_index -1 is the embedding output and num_layers the final
# normed state. Used by `forge check` to find the first layer where two backends diverge.
Trace = Callable[[int, Any], None]


class Model:
    def __init__(self, plan: ModelPlan, backend):
        self.plan = plan
        self.cfg = plan.cfg
        self.backend = backend

    def forward(self, batch: ForwardBatch, kv: list[tuple[Any, Any]], all_logits: bool = False,
                trace: Trace | None = None) -> Any:
        """Logits [S, vocab] for the rows `batch.logits_indices` (every row if all_logits)."""
        be, cfg, plan = self.backend, self.cfg, self.plan
        h = be.embed(plan.embed, batch.token_ids, scale=plan.embed_scale)
        if trace:
            trace(-1, h)
        residual = None     # (post-norm layers) h + residual is the stream
        for lp in plan.layers:
            k_cache, v_cache = kv[lp.index]
            if lp.post_attn_norm is None and lp.post_ffn_norm is None:
                if residual is not None:
                    h, residual = be.add(h, residual), None
                h = self._prenorm_layer(lp, h, batch, k_cache, v_cache)
                if trace:
                    trace(lp.index, h)
                continue
            if residual is None:
                x, residual = be.rms_norm(h, lp.attn_norm, cfg.rms_eps), h
            else:
                x, residual = be.rms_norm(h, lp.attn_norm, cfg.rms_eps, residual=residual)
            a = be.linear(self._attention(lp, x, batch, k_cache, v_cache), lp.wo)
            if lp.post_attn_norm is not None:
                a = be.rms_norm(a, lp.post_attn_norm, cfg.rms_eps)
            x, residual = be.rms_norm(a, lp.ffn_norm, cfg.rms_eps, residual=residual)
            h = self._ffn(lp, x)
            if lp.post_ffn_norm is not None:
                h = be.rms_norm(h, lp.post_ffn_norm, cfg.rms_eps)
            if trace:
                trace(lp.index, be.add(h, residual))
        # (a decode step samples every row, in order: logits_indices is arange(T), no gather)
        if not all_logits and not (batch.max_query_len == 1
                                   and batch.logits_indices.shape[0] == batch.num_tokens):
            h = be.gather_rows(h, batch.logits_indices)
            if residual is not None:
                residual = be.gather_rows(residual, batch.logits_indices)
        if residual is None:
            x = be.rms_norm(h, plan.output_norm, cfg.rms_eps)
        else:
            x, _ = be.rms_norm(h, plan.output_norm, cfg.rms_eps, residual=residual)
        if trace:
            trace(cfg.num_layers, x)
        logits = be.logits(x, plan.output)
        if plan.final_softcap:
            logits = be.softcap(logits, plan.final_softcap)
        return logits

    def _prenorm_layer(self, lp: LayerPlan, h: Any, batch: ForwardBatch, k_cache: Any,
                       v_cache: Any) -> Any:
        """A layer without post-norms (Llama, Qwen2, ...): h + attn(norm(h)), then the same with
        the FFN, through the contract's fusable ops (norm_linear: the norm, a fused projection
        and the FFN's activation; linear with a residual: the output projections and the
        residual adds)."""
        o = self._attention(lp, h, batch, k_cache, v_cache, norm=True)
        h = self.backend.linear(o, lp.wo, residual=h)
        return self._ffn(lp, h, norm=True, residual=h)

    def _attention(self, lp: LayerPlan, x: Any, batch: ForwardBatch, k_cache: Any, v_cache: Any,
                   norm: bool = False) -> Any:
        """The attention output [T, H*Dv] (before the output projection) of x, or with `norm`,
        of rms_norm(x, attn_norm) (one norm_linear where the projection is fused)."""
        be, cfg, plan = self.backend, self.cfg, self.plan
        if norm and lp.wqkv is None:
            x, norm = be.rms_norm(x, lp.attn_norm, cfg.rms_eps), False
        if lp.wqkv is not None:
            if norm:
                qkv = be.norm_linear(x, lp.attn_norm, cfg.rms_eps, lp.wqkv, lp.bqkv)
            else:
                qkv = be.linear(x, lp.wqkv, lp.bqkv)
            q = qkv[:, : plan.q_size]
            k = qkv[:, plan.q_size: plan.q_size + plan.kv_size]
            v = qkv[:, plan.q_size + plan.kv_size:]
        elif lp.wqk is not None:
            qk = be.linear(x, lp.wqk, lp.bqk)
            q = qk[:, : plan.q_size]
            k = qk[:, plan.q_size:]
            v = be.linear(x, lp.wv, lp.bv)
        else:
            q = be.linear(x, lp.wq, lp.bq)
            k = be.linear(x, lp.wk, lp.bk)
            v = be.linear(x, lp.wv, lp.bv)
        T = batch.num_tokens
        if lp.q_norm is not None:
            q = be.rms_norm(q.reshape(T * cfg.num_heads, cfg.head_dim), lp.q_norm, cfg.rms_eps)
            q = q.reshape(T, plan.q_size)
            k = be.rms_norm(k.reshape(T * cfg.num_kv_heads, cfg.head_dim), lp.k_norm, cfg.rms_eps)
            k = k.reshape(T, plan.kv_size)
        return be.rope_attention(q, k, v, batch, k_cache, v_cache, lp.rope, cfg.num_heads,
                                 cfg.num_kv_heads, cfg.head_dim, cfg.attn_scale,
                                 sliding_window=lp.window, softcap=lp.softcap)

    def _ffn(self, lp: LayerPlan, x: Any, norm: bool = False, residual: Any = None) -> Any:
        """The FFN of x, or with `norm`, of rms_norm(x, ffn_norm) (one norm_linear with the
        activation where gate and up are fused), plus `residual` if given."""
        be, cfg = self.backend, self.cfg
        if lp.w_gate_up is not None and norm:
            g = be.norm_linear(x, lp.ffn_norm, cfg.rms_eps, lp.w_gate_up, act=cfg.act)
        elif lp.w_gate_up is not None:
            gu = be.linear(x, lp.w_gate_up)
            f = cfg.intermediate_size
            g = be.act_mul(gu[:, :f], gu[:, f:], cfg.act)
        else:
            if norm:
                x = be.rms_norm(x, lp.ffn_norm, cfg.rms_eps)
            g = be.act_mul(be.linear(x, lp.w_gate), be.linear(x, lp.w_up), cfg.act)
        return be.linear(g, lp.w_down, residual=residual)
