"""forge.kernels.attention against a float64 NumPy reference (explicit loops, dense mask).

Runs under TRITON_INTERPRET=1 on the CPU (small shapes) and natively on a GPU. Caches are filled
with NaN everywhere except the slots the sequences own, so any read past a sequence's end or of
the null block 0 poisons the output.
"""
from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from forge.kernels import attention as attn  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TORCH_DT = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# (atol, rtol) on outputs of size ~1: fp32 is exact math up to summation order; bf16/fp16 round
# the probabilities to the cache dtype before P @ V and the output to the activation dtype.
TOL = {"fp32": (2e-5, 2e-5), "fp16": (4e-3, 4e-3), "bf16": (2.5e-2, 2.5e-2)}


# ----------------------------------------------------------------------------------------------
# reference and inputs


def ref_attention(q, k_cache, v_cache, qsl, seq_lens, block_tables, H, Hkv, scale,
                  window=None, softcap=None):
    """Plain float64 paged attention: loops over sequences, queries and heads; dense mask."""
    q = q.astype(np.float64)
    kc = k_cache.astype(np.float64)
    vc = v_cache.astype(np.float64)
    bs, dk, dv = kc.shape[1], kc.shape[3], vc.shape[3]
    G = H // Hkv
    out = np.zeros((q.shape[0], H * dv))
    for b in range(len(seq_lens)):
        L = int(seq_lens[b])
        q0, q1 = int(qsl[b]), int(qsl[b + 1])
        ql = q1 - q0
        K = np.stack([kc[block_tables[b, j // bs], j % bs] for j in range(L)])  # [L, Hkv, Dk]
        V = np.stack([vc[block_tables[b, j // bs], j % bs] for j in range(L)])  # [L, Hkv, Dv]
        for i in range(ql):
            p = L - ql + i
            allowed = np.array([j <= p and (window is None or p - j < window) for j in range(L)])
            for h in range(H):
                s = K[:, h // G] @ q[q0 + i, h * dk:(h + 1) * dk] * scale
                if softcap:
                    s = softcap * np.tanh(s / softcap)
                s = np.where(allowed, s, -np.inf)
                w = np.exp(s - s.max())
                w /= w.sum()
                out[q0 + i, h * dv:(h + 1) * dv] = w @ V[:, h // G]
    return out


def make_case(rng, seq_lens, q_lens, H, Hkv, dk, dv, bs, dtype, q_mult=1.0, spare_blocks=3,
              fused_kv=False, wide_q=False):
    """Random paged inputs: shuffled block ids, NaN in every slot no sequence owns."""
    tdt = TORCH_DT[dtype]
    nblk = [-(-L // bs) for L in seq_lens]
    nb = 1 + sum(nblk) + spare_blocks  # block 0 is the null block
    ids = rng.permutation(np.arange(1, nb))
    W = max(nblk) + 2  # padded with 0
    bt = np.zeros((len(seq_lens), W), np.int32)
    k = np.full((nb, bs, Hkv, dk), np.nan, np.float32)
    v = np.full((nb, bs, Hkv, dv), np.nan, np.float32)
    used = 0
    for b, L in enumerate(seq_lens):
        bt[b, :nblk[b]] = ids[used:used + nblk[b]]
        used += nblk[b]
        for j in range(L):
            k[bt[b, j // bs], j % bs] = rng.standard_normal((Hkv, dk))
            v[bt[b, j // bs], j % bs] = rng.standard_normal((Hkv, dv))
    T = int(sum(q_lens))
    q = (rng.standard_normal((T, H * dk)) * q_mult).astype(np.float32)
    qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)

    # Round to the dtype first so the reference sees exactly what the kernel sees.
    q_t = torch.from_numpy(q).to(tdt)
    if wide_q:  # q as a column slice of a wider activation (row stride != H*Dk)
        wide = torch.zeros((T, H * dk + 24), dtype=tdt)
        wide[:, 8:8 + H * dk] = q_t
        q_t = wide.to(DEV)[:, 8:8 + H * dk]
    else:
        q_t = q_t.to(DEV)
    k_t = torch.from_numpy(k).to(tdt)
    v_t = torch.from_numpy(v).to(tdt)
    if fused_kv:  # K and V as views of one [NB, 2, BS, Hkv, D] buffer (block stride doubles)
        assert dk == dv
        kv = torch.stack([k_t, v_t], dim=1).to(DEV)
        k_t, v_t = kv[:, 0], kv[:, 1]
    else:
        k_t, v_t = k_t.to(DEV), v_t.to(DEV)
    t = dict(q=q_t, k_cache=k_t, v_cache=v_t,
             query_start_loc=torch.from_numpy(qsl).to(DEV),
             seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEV),
             block_tables=torch.from_numpy(bt).to(DEV))
    n = dict(q=q_t.float().cpu().numpy(), k_cache=k_t.float().cpu().numpy(),
             v_cache=v_t.float().cpu().numpy(), qsl=qsl, seq_lens=np.array(seq_lens),
             block_tables=bt)
    return t, n


def run_and_check(t, n, H, Hkv, scale, dtype, window=None, softcap=None, **kw):
    got = attn.attention(t["q"], t["k_cache"], t["v_cache"], t["query_start_loc"], t["seq_lens"],
                         t["block_tables"], H, Hkv, scale, sliding_window=window, softcap=softcap,
                         **kw)
    want = ref_attention(n["q"], n["k_cache"], n["v_cache"], n["qsl"], n["seq_lens"],
                         n["block_tables"], H, Hkv, scale, window, softcap)
    assert got.dtype == t["q"].dtype
    assert tuple(got.shape) == want.shape
    g = got.float().cpu().numpy()
    assert np.isfinite(g).all(), "non-finite output (read outside the sequence?)"
    atol, rtol = TOL[dtype]
    np.testing.assert_allclose(g, want, atol=atol, rtol=rtol)
    return got


SEQ_LENS = [1, 5, 17, 33, 70]
# full prompt (1, 5, 70), chunked prefill with context (9 of 17), decode (1 of 33)
Q_LENS = [1, 5, 9, 1, 70]


# ----------------------------------------------------------------------------------------------
# config overrides


@pytest.fixture(autouse=True)
def fresh_configs():
    """The launcher caches resolved configs: start and end every test without them, so that
    the defaults patched below take effect and do not leak into other tests."""
    attn.clear_config_cache()
    yield
    attn.clear_config_cache()


@pytest.fixture
def single_loop(monkeypatch):
    """Force the prefill kernel's SINGLE_LOOP variant (the AMD default) on or off."""
    def force(on: bool):
        orig = attn._prefill_default
        monkeypatch.setattr(attn, "_prefill_default",
                            lambda *a: dict(orig(*a), SINGLE_LOOP=int(on)))
        attn.clear_config_cache()
    return force


@pytest.fixture
def decode_cfg(monkeypatch):
    """Lay keys over the decode kernel's launcher default (BLOCK_N, MIN_PARTITION, ...), with
    the tuning tables out of the way (on a GPU a shipped entry, such as sm90's d128_g4, would
    otherwise override the keys a test sets)."""
    from forge.kernels import tuning

    tables = contextlib.ExitStack()

    def force(**kw):
        orig = attn._decode_default
        monkeypatch.setattr(attn, "_decode_default", lambda *a: dict(orig(*a), **kw))
        if not tables._exit_callbacks:
            tables.enter_context(tuning.override({"attn_decode": {"*": {}},
                                                  "attn_decode_f32": {"*": {}}}))
        attn.clear_config_cache()
    yield force
    tables.close()
    attn.clear_config_cache()


@pytest.fixture
def no_reduce_launch(monkeypatch):
    """Fail if the separate reduce kernel is launched."""
    class Forbidden:
        def __getitem__(self, grid):
            raise AssertionError("_attn_reduce_kernel launched")
    monkeypatch.setattr(attn, "_attn_reduce_kernel", Forbidden())


def counters_zero(device) -> bool:
    buf = attn._SEMAPHORES.get((device.type, device.index))
    return buf is None or int(buf.abs().sum()) == 0


# ----------------------------------------------------------------------------------------------
# prefill / mixed batches (varlen kernel)


# bs 16 < BLOCK_N: per-key block gather; bs 32/64 >= BLOCK_N: one block id per KV tile.
@pytest.mark.parametrize("H,Hkv,dk,dv,dtype,window,softcap,bs,single", [
    (8, 2, 64, 64, "fp32", None, None, 16, False),  # GQA 4:1
    (6, 2, 80, 80, "bf16", 7, None, 32, True),      # GQA 6:2 (group of 3), odd head dim, window
    (2, 2, 64, 64, "fp16", None, 20.0, 64, False),  # MHA 1:1, softcap
    (4, 4, 80, 80, "fp32", 7, 20.0, 16, True),      # window + softcap together
])
def test_prefill_mixed_batch(rng, single_loop, H, Hkv, dk, dv, dtype, window, softcap, bs,
                             single):
    single_loop(single)
    t, n = make_case(rng, SEQ_LENS, Q_LENS, H, Hkv, dk, dv, bs, dtype,
                     q_mult=3.0 if softcap else 1.0)
    run_and_check(t, n, H, Hkv, dk ** -0.5, dtype, window, softcap, max_query_len=max(Q_LENS),
                  max_seq_len=max(SEQ_LENS))


@pytest.mark.parametrize("window,single", [(None, False), (7, False), (40, False), (40, True)])
def test_prefill_tile_edges(rng, single_loop, window, single):
    """Chunks whose first position sits just before/after multiples of 32 and 64 (the KV tile
    sizes), so the unmasked middle of the KV loop meets the diagonal and the window edge at
    every alignment."""
    ctxs = [30, 31, 32, 33, 36, 37, 62, 63, 64, 65, 70, 102]
    q_lens = [3] * len(ctxs)
    seq_lens = [c + 3 for c in ctxs]
    single_loop(single)
    t, n = make_case(rng, seq_lens, q_lens, 2, 1, 64, 64, 16, "fp32")
    run_and_check(t, n, 2, 1, 0.125, "fp32", window, max_query_len=3)


def fresh_rows(t, seq_lens, q_lens):
    """This step's K / V rows [T, Hkv*D] as the cache holds them (each sequence's last q_len
    keys): what `attention(..., fresh=)` is given."""
    kc, vc, bt = t["k_cache"], t["v_cache"], t["block_tables"].long()
    bs = kc.shape[1]
    ks, vs = [], []
    for b, (L, ql) in enumerate(zip(seq_lens, q_lens)):
        pos = torch.arange(L - ql, L, device=kc.device)
        blk, off = bt[b, pos // bs], pos % bs
        ks.append(kc[blk, off].reshape(ql, -1))
        vs.append(vc[blk, off].reshape(ql, -1))
    return torch.cat(ks), torch.cat(vs)


def poison_whole_prompts(t, seq_lens, q_lens):
    """NaN in the cache blocks of the sequences that have no context (whole prompts): a kernel
    that reads their keys from the cache instead of the fresh rows gives NaN."""
    bs = t["k_cache"].shape[1]
    # (copies: on the CPU the reference's arrays share the tensors' memory)
    t["k_cache"], t["v_cache"] = t["k_cache"].clone(), t["v_cache"].clone()
    for b, (L, ql) in enumerate(zip(seq_lens, q_lens)):
        if L == ql:
            blocks = t["block_tables"][b, :-(-L // bs)].long()
            t["k_cache"][blocks] = float("nan")
            t["v_cache"][blocks] = float("nan")


@pytest.mark.parametrize("H,Hkv,dk,dtype,window,softcap,bs,single", [
    (8, 2, 64, "fp32", None, None, 16, False),   # GQA 4:1, the split loops
    (6, 2, 64, "bf16", 7, None, 32, True),       # a group of 3, window, the single loop
    (2, 2, 32, "fp16", None, 20.0, 64, False),   # MHA, softcap
    (4, 1, 64, "fp32", 40, 20.0, 16, False),     # window + softcap
])
def test_prefill_fresh_rows(rng, single_loop, H, Hkv, dk, dtype, window, softcap, bs, single):
    """Whole prompts (no context) read their keys from this step's rows, sequences with a
    context from the cache, in one launch: the whole prompts' cache blocks hold NaN and the
    output matches the float64 reference, for every sequence."""
    single_loop(single)
    t, n = make_case(rng, SEQ_LENS, Q_LENS, H, Hkv, dk, dk, bs, dtype,
                     q_mult=3.0 if softcap else 1.0)
    fk, fv = fresh_rows(t, SEQ_LENS, Q_LENS)
    poison_whole_prompts(t, SEQ_LENS, Q_LENS)
    run_and_check(t, n, H, Hkv, dk ** -0.5, dtype, window, softcap, max_query_len=max(Q_LENS),
                  max_seq_len=max(SEQ_LENS), fresh=(fk, fv))


def test_prefill_fresh_rows_strided_and_switch(rng, monkeypatch):
    """Fresh rows as column views of one wider activation (a fused QKV output's row stride);
    FORGE_ATTN_FRESH=0 reads the cache (which then shows its NaN)."""
    seq_lens, q_lens = [40, 23, 30], [40, 23, 6]
    H, Hkv, d = 4, 2, 64
    t, n = make_case(rng, seq_lens, q_lens, H, Hkv, d, d, 16, "fp32")
    fk, fv = fresh_rows(t, seq_lens, q_lens)
    wide = torch.zeros((fk.shape[0], (H + 2 * Hkv) * d), device=DEV)
    wide[:, H * d:(H + Hkv) * d] = fk
    wide[:, (H + Hkv) * d:] = fv
    fresh = (wide[:, H * d:(H + Hkv) * d], wide[:, (H + Hkv) * d:])
    poison_whole_prompts(t, seq_lens, q_lens)
    run_and_check(t, n, H, Hkv, 0.125, "fp32", max_query_len=40, max_seq_len=40, fresh=fresh)
    monkeypatch.setenv("FORGE_ATTN_FRESH", "0")
    got = attn.attention(t["q"], t["k_cache"], t["v_cache"], t["query_start_loc"],
                         t["seq_lens"], t["block_tables"], H, Hkv, 0.125, max_query_len=40,
                         max_seq_len=40, fresh=fresh)
    assert torch.isnan(got[:63]).all() and torch.isfinite(got[63:]).all()


def test_prefill_fresh_rows_not_taken(rng):
    """Where the copies cannot take the rows (a padded head dim, rows not 16-byte aligned) the
    kernel reads the cache and the result is the same; rows of the wrong shape or dtype are an
    error."""
    seq_lens, q_lens = [37, 20], [37, 4]
    t, n = make_case(rng, seq_lens, q_lens, 4, 2, 48, 48, 16, "fp32")   # BLOCK_DK 64 != 48
    fk, fv = fresh_rows(t, seq_lens, q_lens)
    run_and_check(t, n, 4, 2, 0.1, "fp32", max_query_len=37, max_seq_len=37, fresh=(fk, fv))
    t, n = make_case(rng, seq_lens, q_lens, 4, 2, 64, 64, 16, "fp32")
    fk, fv = fresh_rows(t, seq_lens, q_lens)
    buf = torch.zeros(fk.numel() + 1, device=DEV)
    buf[1:] = fk.reshape(-1)
    odd = buf[1:].view_as(fk)            # 4 bytes past an aligned start
    assert odd.data_ptr() % 16
    run_and_check(t, n, 4, 2, 0.1, "fp32", max_query_len=37, max_seq_len=37, fresh=(odd, fv))
    call = dict(max_query_len=37, max_seq_len=37)
    args = (t["q"], t["k_cache"], t["v_cache"], t["query_start_loc"], t["seq_lens"],
            t["block_tables"], 4, 2, 0.1)
    with pytest.raises(ValueError, match="fresh"):
        attn.attention(*args, **call, fresh=(fk[:-1], fv))
    with pytest.raises(ValueError, match="fresh"):
        attn.attention(*args, **call, fresh=(fk, fv.half()))


def test_prefill_rope_writes_fresh_rows(rng, monkeypatch):
    """attention(..., rope=) at prefill: the rope kernel also writes the rotated k rows, which
    the whole prompts read: the same result as rope followed by attention, whose cache holds
    NaN for no slot of this step."""
    from forge.kernels import rope as rope_mod
    from forge.runtime.backend import RopeSpec

    seq_lens, q_lens = [45, 30, 9], [45, 12, 9]
    H, Hkv, d, bs = 4, 2, 64, 16
    t, _ = make_case(rng, seq_lens, q_lens, H, Hkv, d, d, bs, "fp32")
    T = sum(q_lens)
    k = torch.randn((T, Hkv * d), device=DEV)
    v = torch.randn((T, Hkv * d), device=DEV)
    pos = torch.cat([torch.arange(L - ql, L) for L, ql in zip(seq_lens, q_lens)]).to(DEV)
    bt = t["block_tables"].long()
    slots = torch.cat([bt[b, p // bs] * bs + p % bs for b, p in
                       enumerate(torch.arange(L - ql, L, device=DEV)
                                 for L, ql in zip(seq_lens, q_lens))])
    spec = RopeSpec(rot_dim=d, base=10000.0, style="neox")
    kc1, vc1 = t["k_cache"].clone(), t["v_cache"].clone()
    q1 = rope_mod.rope(t["q"], k, v, pos, kc1, vc1, slots, spec, H, Hkv, d)
    args = (t["query_start_loc"], t["seq_lens"], t["block_tables"], H, Hkv, 0.125)
    want = attn.attention(q1, kc1, vc1, *args, max_query_len=45, max_seq_len=45)
    kc2, vc2 = t["k_cache"].clone(), t["v_cache"].clone()
    f = rope_mod.fused_args(t["q"], k, v, pos, kc2, vc2, slots, spec, H, Hkv, d)
    k_outs = []
    apply = rope_mod.apply
    monkeypatch.setattr(rope_mod, "apply", lambda *a: k_outs.append(a[-1]) or apply(*a))
    got = attn.attention(t["q"], kc2, vc2, *args, max_query_len=45, max_seq_len=45, rope=f)
    assert len(k_outs) == 1 and k_outs[0] is not None   # the rotated rows were asked for
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kc2, kc1, equal_nan=True)


@pytest.mark.parametrize("dtype,chunk", [("fp32", 16), ("bf16", 32)])
def test_qk_chunked(rng, monkeypatch, dtype, chunk):
    """QK_CHUNK < head dim (the RDNA3 fp32 path): Q K^T summed over head-dim chunks, Q reloaded
    per KV tile; prefill (both loop structures) and split decode, head dim 80 (masked tail)."""
    for name in ("_prefill_default", "_decode_default"):
        orig = getattr(attn, name)
        monkeypatch.setattr(attn, name, lambda *a, _o=orig: dict(_o(*a), QK_CHUNK=chunk))
    attn.clear_config_cache()
    t, n = make_case(rng, [17, 40], [17, 6], 6, 2, 80, 80, 16, dtype)
    run_and_check(t, n, 6, 2, 80 ** -0.5, dtype, window=20, max_query_len=17)
    orig = attn._prefill_default
    monkeypatch.setattr(attn, "_prefill_default", lambda *a: dict(orig(*a), SINGLE_LOOP=1))
    attn.clear_config_cache()
    run_and_check(t, n, 6, 2, 80 ** -0.5, dtype, softcap=20.0, max_query_len=17)
    t, n = make_case(rng, [17, 40], [1, 1], 6, 2, 80, 80, 16, dtype)
    run_and_check(t, n, 6, 2, 80 ** -0.5, dtype, max_query_len=1, partition_size=16)


def test_prefill_strided_views_and_out(rng):
    """q as a column slice, K/V as views of one fused buffer, a caller-given `out`,
    max_query_len unknown, a sequence with no query this step, Dk != Dv."""
    H, Hkv = 4, 2
    seq_lens, q_lens = [17, 3, 33], [17, 0, 4]
    t, n = make_case(rng, seq_lens, q_lens, H, Hkv, 64, 64, 16, "fp32", fused_kv=True,
                     wide_q=True)
    out = torch.full((sum(q_lens), H * 64), float("nan"), device=DEV)
    got = run_and_check(t, n, H, Hkv, 0.125, "fp32", window=9, out=out)
    assert got.data_ptr() == out.data_ptr()
    t, n = make_case(rng, [20, 6], [20, 2], H, Hkv, 64, 80, 16, "bf16")
    run_and_check(t, n, H, Hkv, 0.125, "bf16", softcap=20.0)


@pytest.mark.parametrize("ht", [1, 2, 3])
def test_prefill_heads_per_tile(rng, monkeypatch, ht):
    """HT (query heads of a KV group packed into one tile) below the group size: the group's
    heads spread over NHC tiles (3 of a group of 6 does not divide the 32-row tile: its last
    rows are idle), each tile holding BLOCK_M // HT tokens; prefill, chunk and decode mixed."""
    orig = attn._prefill_default
    monkeypatch.setattr(attn, "_prefill_default", lambda *a: dict(orig(*a), HT=ht, BLOCK_M=32))
    attn.clear_config_cache()
    plan = attn._prefill_plan("interp", 64, 64, 6, 4, 0, sum(Q_LENS), max(SEQ_LENS))
    assert (plan["HT"], plan["NHC"], plan["BQ"]) == (ht, -(-6 // ht), 32 // ht)
    t, n = make_case(rng, SEQ_LENS, Q_LENS, 12, 2, 64, 64, 16, "fp32")
    run_and_check(t, n, 12, 2, 0.125, "fp32", window=20, max_query_len=max(Q_LENS))


@pytest.mark.parametrize("window,keys", [(0, 100), (20, 20), (500, 100)])
def test_prefill_bucket_keys(rng, monkeypatch, window, keys):
    """attention() asks the prefill plan for the keys a query may attend: max_seq_len, capped
    by the sliding window (before the launcher widens its split bound by a tile)."""
    got = []
    orig = attn._prefill_plan

    def spy(*a):
        got.append(a[-1])
        return orig(*a)

    monkeypatch.setattr(attn, "_prefill_plan", spy)
    t, n = make_case(rng, [30, 40], [30, 5], 4, 2, 32, 32, 16, "fp32")
    run_and_check(t, n, 4, 2, 0.2, "fp32", window=window or None, max_query_len=30,
                  max_seq_len=100)
    assert got == [keys]


def test_cache_offset_width():
    """The prefill kernel forms 32-bit cache offsets unless a cache spans 2**31 elements or
    more (counted from its shape and strides: a view into a larger buffer counts its reach)."""
    per_block = 16 * 8 * 128
    under = torch.empty(((1 << 31) // per_block, 16, 8, 128), device="meta")
    over = torch.empty(((1 << 31) // per_block + 1, 16, 8, 128), device="meta")
    assert attn._span(under) == 1 << 31 and attn._span(over) == (1 << 31) + per_block
    assert attn._span(torch.empty((4, 16, 8, 128), device="meta")[:, :, 2:4]) == \
        3 * per_block + 15 * 8 * 128 + 128 + 128
    assert attn._span(torch.empty((0, 16, 8, 128), device="meta")) == 0


def test_negative_scale_rejected(rng):
    t, _ = make_case(rng, [5], [5], 2, 1, 64, 64, 16, "fp32")
    with pytest.raises(ValueError, match="scale"):
        attn.attention(t["q"], t["k_cache"], t["v_cache"], t["query_start_loc"], t["seq_lens"],
                       t["block_tables"], 2, 1, -0.125)


@pytest.fixture
def split_counts(monkeypatch):
    """The split counts (`num_prefill_splits`) the prefill launches of the test use, in order."""
    used = []
    orig = attn.num_prefill_splits

    def count(*a):
        used.append(orig(*a))
        return used[-1]

    monkeypatch.setattr(attn, "num_prefill_splits", count)
    return used


@pytest.fixture
def prefill_splits(monkeypatch, split_counts):
    """Make the prefill launcher split the keys of small test grids: a CU count (the
    interpreter's) above the grid, and splits of KV_SPLIT_MIN keys (other keys laid over the
    default too). Returns the split counts the launches used."""
    def force(min_keys, **kw):
        orig = attn._prefill_default
        monkeypatch.setattr(attn, "_prefill_default",
                            lambda *a: dict(orig(*a), KV_SPLIT_MIN=min_keys, **kw))
        monkeypatch.setattr(attn, "_NO_GPU_CUS", 256)
        attn.clear_config_cache()
        return split_counts
    return force


@pytest.mark.parametrize("dtype,single,window,softcap,bs,min_keys,block_m", [
    ("fp32", False, None, None, 16, 32, None),
    ("fp32", True, None, None, 16, 32, None),
    ("bf16", False, 130, None, 32, 32, None),    # window: front tiles masked, on the last split
    ("fp16", True, 130, 20.0, 16, 64, None),
    ("fp32", False, None, 20.0, 64, 100, None),  # KV_SPLIT_MIN not a multiple of BLOCK_N
    ("fp32", False, None, None, 16, 32, 128),    # the merge goes 64 rows at a time
    ("bf16", True, 130, None, 16, 32, 128),
])
def test_prefill_split_keys(rng, prefill_splits, dtype, single, window, softcap, bs, min_keys,
                            block_m):
    """The keys of a prefill tile split over programs whose partials the last to finish
    merges: whole prompts, chunks after a context (splits of the unmasked tiles; the last split
    also takes the masked ones), a decode row, tiles too short to split, GQA 3:1 (idle rows),
    head dim 80; 128-row tiles (merged in two row chunks). The arrival counters are left at
    zero."""
    used = prefill_splits(min_keys, SINGLE_LOOP=int(single),
                          **({"BLOCK_M": block_m} if block_m else {}))
    seq_lens, q_lens = [300, 5, 130, 261, 40], [7, 5, 40, 1, 40]
    t, n = make_case(rng, seq_lens, q_lens, 6, 2, 80, 80, bs, dtype,
                     q_mult=3.0 if softcap else 1.0)
    run_and_check(t, n, 6, 2, 80 ** -0.5, dtype, window, softcap, max_query_len=40,
                  max_seq_len=max(seq_lens))
    assert used and used[-1] > 1, used
    assert counters_zero(t["q"].device)
    # max_seq_len unknown: the block table's capacity bounds the splits
    run_and_check(t, n, 6, 2, 80 ** -0.5, dtype, window, softcap, max_query_len=40)
    assert used[-1] > 1 and counters_zero(t["q"].device)


@pytest.mark.parametrize("bn_fresh,single,window,min_keys", [
    (16, False, None, 32), (64, False, 130, 32), (64, True, None, 100), (16, True, 130, 64),
])
def test_prefill_fresh_rows_own_tiles_and_splits(rng, prefill_splits, bn_fresh, single, window,
                                                 min_keys):
    """Whole prompts in tiles of BLOCK_N_FRESH keys (narrower or wider than the cache's
    BLOCK_N 32) next to chunks after a context, their keys split over programs (each branch
    splits its own tiles, at least KV_SPLIT_MIN keys a split), both loop structures, a
    window: the whole prompts' cache blocks NaN, the float64 reference, counters back at 0."""
    used = prefill_splits(min_keys, SINGLE_LOOP=int(single), BLOCK_N_FRESH=bn_fresh)
    seq_lens, q_lens = [300, 5, 260, 261, 40], [300, 5, 40, 1, 40]
    t, n = make_case(rng, seq_lens, q_lens, 4, 2, 64, 64, 16, "fp32")
    fk, fv = fresh_rows(t, seq_lens, q_lens)
    poison_whole_prompts(t, seq_lens, q_lens)
    run_and_check(t, n, 4, 2, 0.125, "fp32", window, max_query_len=300, max_seq_len=300,
                  fresh=(fk, fv))
    assert used and used[-1] > 1, used
    assert counters_zero(t["q"].device)


def test_prefill_tile_sizes_checked(rng):
    """A table's BLOCK_M / BLOCK_N must be >= 16 (tl.dot's minimum; the tables check for
    powers of two): a clear error, not a compile failure."""
    from forge.kernels import tuning

    t, _ = make_case(rng, [5], [5], 2, 1, 64, 64, 16, "fp32")
    for key, v in (("BLOCK_M", 8), ("BLOCK_N", 8)):
        with tuning.override({"attn_prefill_f32": {"*": {key: v}}}):
            attn.clear_config_cache()
            with pytest.raises(ValueError, match=key):
                attn.attention(t["q"], t["k_cache"], t["v_cache"], t["query_start_loc"],
                               t["seq_lens"], t["block_tables"], 2, 1, 0.125)


def test_prefill_split_count():
    """The split rule: programs up to one per CU (no second wave) below half the CUs, two
    splits above; KV_SPLIT_MIN keys each, at most KV_SPLITS; none when the grid already fills
    the device or the config says 1."""
    plan = {"kv_splits": 16, "kv_split_min": 512}
    H100 = 132
    assert attn.num_prefill_splits(33, 8704, plan, H100) == 4      # Gemma 3: 512 after 8192
    assert attn.num_prefill_splits(33, 1024, plan, H100) == 2      # the keys bound it
    assert attn.num_prefill_splits(33, 500, plan, H100) == 1
    assert attn.num_prefill_splits(2, 1 << 20, plan, H100) == 16   # KV_SPLITS bounds it
    assert attn.num_prefill_splits(65, 1 << 20, plan, H100) == 2   # 130 programs, not 195
    assert attn.num_prefill_splits(17, 1 << 20, plan, H100) == 7   # 119, not 136
    assert attn.num_prefill_splits(67, 1 << 20, plan, H100) == 2   # over half the CUs: two
    assert attn.num_prefill_splits(131, 1 << 20, plan, H100) == 2
    assert attn.num_prefill_splits(132, 1 << 20, plan, H100) == 1  # the grid fills the GPU
    assert attn.num_prefill_splits(136, 8704, plan, H100) == 1     # 8B heads: 512 after 8192
    assert attn.num_prefill_splits(2, 1 << 20, dict(plan, kv_splits=1), H100) == 1
    assert attn.num_prefill_splits(2, 0, plan, H100) == 1


def test_prefill_head_dim_256(rng):
    t, n = make_case(rng, [5, 40], [5, 23], 4, 1, 256, 256, 16, "bf16")
    run_and_check(t, n, 4, 1, 256 ** -0.5, "bf16", window=7, max_query_len=23)


# ----------------------------------------------------------------------------------------------
# decode (one query per sequence): direct, and split with the fused or the separate merge


@pytest.mark.parametrize("H,Hkv,dk,dtype,window,softcap,partition,bs", [
    (8, 2, 64, "fp32", None, None, None, 16),  # no split
    (8, 2, 64, "fp32", None, None, 16, 16),    # split into 16-key partitions + reduce
    (6, 2, 80, "bf16", 7, None, 16, 16),       # window: leading splits are empty
    (2, 2, 64, "fp16", None, 20.0, 24, 32),    # partition not a multiple of BLOCK_N; one id/tile
    (4, 1, 256, "fp32", 7, 20.0, 32, 64),
])
def test_decode(rng, H, Hkv, dk, dtype, window, softcap, partition, bs):
    q_lens = [1] * len(SEQ_LENS)
    t, n = make_case(rng, SEQ_LENS, q_lens, H, Hkv, dk, dk, bs, dtype,
                     q_mult=3.0 if softcap else 1.0)
    run_and_check(t, n, H, Hkv, dk ** -0.5, dtype, window, softcap, max_query_len=1,
                  max_seq_len=max(SEQ_LENS), partition_size=partition)


@pytest.mark.parametrize("fused,window,v_early", [(1, None, 1), (0, None, 1), (1, 50, 0),
                                                   (0, 50, 0)])
def test_decode_splits_follow_each_sequence(rng, decode_cfg, fused, window, v_early):
    """Automatic splits: the grid's split count comes from max_seq_len, and each sequence cuts
    its own length (with a window: only the window's keys) into n_parts <= S splits, so one batch
    mixes sequences of 1 to 5 splits (1: written directly, no partials). The merge reads 2
    splits per step (several steps); fused = the last split merges, else the reduce kernel.
    Also V loaded with K (NVIDIA/CDNA) or after the softmax (RDNA3)."""
    decode_cfg(MIN_PARTITION=32, SPLITS_PER_CU=64, SPLIT_CHUNK=2, FUSED_REDUCE=fused,
               V_EARLY=v_early)
    seq_lens = [1, 5, 17, 33, 70, 130]
    t, n = make_case(rng, seq_lens, [1] * 6, 8, 2, 64, 64, 16, "fp32")
    plan = attn._decode_plan("interp", 64, 64, 4, 4)
    assert attn.num_decode_splits(130, 6 * 2, plan, 4) == 5  # grid: 5 splits of >= 32 keys
    run_and_check(t, n, 8, 2, 0.125, "fp32", window, max_query_len=1, max_seq_len=130)
    assert counters_zero(t["q"].device)


@pytest.mark.parametrize("fused,partition", [(1, 16), (0, 16), (1, 1000)])
@pytest.mark.parametrize("VE", [(4, 8), (4, 4)])
def test_decode_records_its_quantization(rng, decode_cfg, fused, partition, VE):
    """Decode with xq=(V, E) (the o projection's X_PRE input, xquant.py): the output is
    unchanged, and its int8 codes and chunk scales, written by whichever program stores the
    output (the fused merge, the reduce kernel, or the split itself when there is one), equal
    those quantize_x computes from it; 2 sequences (the GEMV's range), heads of 64 (2 chunks of
    32 or 4 of 16)."""
    from forge.kernels import matmul as mm
    from forge.kernels import xquant

    decode_cfg(FUSED_REDUCE=fused)
    t, n = make_case(rng, [33, 70], [1, 1], 8, 2, 64, 64, 16, "bf16")
    xquant.forget()
    got = run_and_check(t, n, 8, 2, 0.125, "bf16", max_query_len=1, max_seq_len=70,
                        partition_size=partition, xq=VE)
    hit = xquant.lookup(got, *VE)
    assert hit is not None
    xquant.forget()
    want = mm.quantize_x(got, *VE)
    nch = got.shape[1] // (VE[0] * VE[1])
    np.testing.assert_array_equal(hit[1].cpu().numpy(), want[1].cpu().numpy())
    diff = np.abs(xquant.unpack(hit[0], *VE, nch).astype(np.int32)
                  - xquant.unpack(want[0], *VE, nch).astype(np.int32)).max()
    assert diff <= (0 if DEV == "cpu" else 1)
    # prefill (more than one query a sequence) records nothing
    t, n = make_case(rng, [5, 9], [5, 9], 8, 2, 64, 64, 16, "bf16")
    got = run_and_check(t, n, 8, 2, 0.125, "bf16", max_query_len=9, xq=VE)
    assert xquant.lookup(got, *VE) is None


def test_decode_single_partition_is_one_launch(rng, decode_cfg, no_reduce_launch):
    """When no sequence needs a split (S = 1: short max_seq_len), the decode kernel writes the
    output itself and neither a reduce nor partials are needed, even with FUSED_REDUCE off."""
    decode_cfg(FUSED_REDUCE=0)
    t, n = make_case(rng, [3, 20, 31], [1, 1, 1], 4, 2, 64, 64, 16, "bf16")
    plan = attn._decode_plan("interp", 64, 64, 2, 2)
    assert attn.num_decode_splits(32, 3 * 2, plan, 4) == 1
    run_and_check(t, n, 4, 2, 0.125, "bf16", max_query_len=1, max_seq_len=32)


def test_decode_graph_capacity_max_seq_len(rng, decode_cfg, no_reduce_launch):
    """As under a CUDA graph captured for a long max_model_len: max_seq_len = 131072 while the
    real contexts are short. The grid stays bounded (S from the programs-per-CU target, not from
    max_seq_len), the splits each sequence does not reach exit at once, results are exact, and
    the fused merge leaves its arrival counters at zero for the next launch."""
    decode_cfg(SPLITS_PER_CU=16, MAX_SPLITS=32)
    plan = attn._decode_plan("interp", 64, 64, 4, 4)
    assert attn.num_decode_splits(131072, 1 * 2, plan, 4) == 32   # not 131072 / 32 = 4096
    assert attn.num_decode_splits(131072, 64 * 2, plan, 4) == 1
    t, n = make_case(rng, [70, 9, 130], [1, 1, 1], 8, 2, 64, 64, 16, "fp32")
    for _ in range(2):  # a second launch reuses the counters the first one reset
        run_and_check(t, n, 8, 2, 0.125, "fp32", max_query_len=1, max_seq_len=131072)
        assert counters_zero(t["q"].device)
    # forced 16-key splits: S = 256 (the cap) programs per group, nearly all of them empty
    t, n = make_case(rng, [70], [1], 4, 1, 64, 64, 16, "fp32")
    run_and_check(t, n, 4, 1, 0.125, "fp32", max_query_len=1, max_seq_len=131072,
                  partition_size=16)
    assert counters_zero(t["q"].device)


def test_decode_with_queryless_sequences(rng):
    """Decode batch where some sequences have no query this step (graph padding): skipped."""
    t, n = make_case(rng, [9, 4, 30, 2], [1, 0, 1, 0], 4, 2, 64, 64, 16, "fp16")
    run_and_check(t, n, 4, 2, 0.125, "fp16", max_query_len=1, max_seq_len=30, partition_size=16)


def test_decode_max_seq_len_unknown_or_low(rng):
    """max_seq_len unknown: splits sized from the block-table capacity (no host sync). Too low a
    max_seq_len loses no keys: each sequence splits its own length into at most S parts."""
    t, n = make_case(rng, [3, 41], [1, 1], 4, 2, 64, 64, 16, "fp32")
    run_and_check(t, n, 4, 2, 0.125, "fp32", max_query_len=1, partition_size=16)
    run_and_check(t, n, 4, 2, 0.125, "fp32", max_query_len=1, max_seq_len=20, partition_size=16)


def test_decode_matches_prefill_kernel(rng):
    """The same decode batch through both kernels (max_query_len 1 vs unknown)."""
    t, n = make_case(rng, [5, 33, 70], [1] * 3, 4, 2, 64, 64, 16, "fp32")
    args = (t["q"], t["k_cache"], t["v_cache"], t["query_start_loc"], t["seq_lens"],
            t["block_tables"], 4, 2, 0.125)
    a = attn.attention(*args, sliding_window=7, max_query_len=1, partition_size=16)
    b = attn.attention(*args, sliding_window=7)
    torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)


# ----------------------------------------------------------------------------------------------
# argument checks


def test_bad_arguments(rng):
    t, _ = make_case(rng, [5], [5], 4, 2, 64, 64, 16, "fp32")
    base = dict(t, num_heads=4, num_kv_heads=2, scale=0.125)

    def call(**over):
        kw = dict(base, **over)
        return attn.attention(**kw)

    with pytest.raises(ValueError, match="num_heads"):
        call(num_heads=5)
    with pytest.raises(ValueError, match="q"):
        call(q=t["q"][:, :100])
    with pytest.raises(ValueError, match="k_cache"):
        call(num_kv_heads=4, num_heads=8, q=torch.zeros(5, 8 * 64, device=DEV))
    with pytest.raises(ValueError, match="v_cache"):
        call(v_cache=t["v_cache"].half())
    with pytest.raises(ValueError, match="k_cache"):
        call(q=t["q"].half())
    with pytest.raises(ValueError, match="v_cache"):
        call(v_cache=t["v_cache"][:, :, :1])
    with pytest.raises(ValueError, match="query_start_loc"):
        call(query_start_loc=t["query_start_loc"].long())
    with pytest.raises(ValueError, match="seq_lens"):
        call(seq_lens=t["seq_lens"].long())
    with pytest.raises(ValueError, match="block_tables"):
        call(block_tables=t["block_tables"][:, None])
    with pytest.raises(ValueError, match="sliding_window"):
        call(sliding_window=-1)
    with pytest.raises(ValueError, match="softcap"):
        call(softcap=-2.0)
    with pytest.raises(ValueError, match="out"):
        call(out=torch.empty(5, 7, device=DEV))
    with pytest.raises(ValueError, match="max_query_len"):
        call(max_query_len=1)  # 5 query rows for 1 sequence
    with pytest.raises(ValueError, match="q"):
        call(q=t["q"].to(torch.int32))


def test_compile_specs_cover_kernels_dims_dtypes():
    names = {s["name"] for s in attn.COMPILE_SPECS}
    for kern in ("prefill", "decode", "reduce"):
        for d in (64, 128, 256):
            for dt in ("fp16", "bf16", "fp32"):
                assert f"attn_{kern}_d{d}_{dt}" in names
    for kern in ("prefill", "decode"):  # what launches on NVIDIA, compiled for NVIDIA only
        for d in (64, 128, 256):
            spec = next(s for s in attn.COMPILE_SPECS if s["name"] == f"attn_{kern}_d{d}_bf16_nv")
            assert spec["vendors"] == ["nvidia"]
    nv_decode = [s for s in attn.COMPILE_SPECS if s["name"].startswith("attn_decode") and
                 s["name"].endswith("_nv")]
    assert all(s["constexprs"]["SPLIT"] and s["constexprs"]["FUSED_REDUCE"] for s in nv_decode)
    for s in attn.COMPILE_SPECS:
        assert set(s["signature"]) == set(s["fn"].arg_names)
        for k in s["constexprs"]:
            assert s["signature"][k] == "constexpr"
    # the whole-prompt path as Hopper launches it: descriptors whose boxes follow BLOCK_N
    for d in (64, 128, 256):
        spec = next(s for s in attn.COMPILE_SPECS if s["name"] == f"attn_prefill_d{d}_bf16_fresh_nv")
        assert spec["vendors"] == ["nvidia"] and spec["constexprs"]["FRESH"]
        ce = dict(spec["constexprs"], BLOCK_N=128)
        sig = spec["signature_for"](spec["signature"], ce)
        assert sig["k_desc"] == sig["v_desc"] == f"tensordesc<bf16[128, {d}]>"


def test_decode_split_count():
    """S from host ints: ~SPLITS_PER_CU programs per CU for the whole batch, no split shorter
    than MIN_PARTITION, at most MAX_SPLITS; at least 1."""
    plan = {"splits_per_cu": 4, "min_part": 64, "max_splits": 64}
    H100 = 132
    assert attn.num_decode_splits(512, 8, plan, H100) == 8          # batch 1, ctx 512
    assert attn.num_decode_splits(131072, 8, plan, H100) == 64      # batch 1, graph capacity
    assert attn.num_decode_splits(131072, 256, plan, H100) == 3     # batch 32
    assert attn.num_decode_splits(131072, 2048, plan, H100) == 1    # batch 256
    assert attn.num_decode_splits(1, 8, plan, H100) == 1
    assert attn.num_decode_splits(0, 8, plan, H100) == 1


# ----------------------------------------------------------------------------------------------
# GPU only: real sizes, and a cache past 2^31 elements


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,bs,single", [("bf16", 16, False), ("fp16", 64, True),
                                             ("bf16", 64, False)])
def test_gpu_llama_shapes(rng, single_loop, dtype, bs, single):
    """Llama-3-8B heads (32:8, Dh 128), mixed batch with long chunks, and a split decode; both
    prefill loop structures, per-key gather (bs 16) and one block per tile (bs 64)."""
    single_loop(single)
    seq_lens, q_lens = [700, 1500, 333, 2049], [700, 200, 1, 1]
    t, n = make_case(rng, seq_lens, q_lens, 32, 8, 128, 128, bs, dtype)
    run_and_check(t, n, 32, 8, 128 ** -0.5, dtype, max_query_len=700, max_seq_len=2049)
    run_and_check(t, n, 32, 8, 128 ** -0.5, dtype, window=300, softcap=30.0, max_query_len=700,
                  max_seq_len=2049)
    t, n = make_case(rng, [4000, 17, 900], [1, 1, 1], 32, 8, 128, 128, bs, dtype)
    run_and_check(t, n, 32, 8, 128 ** -0.5, dtype, max_query_len=1, max_seq_len=4000)
    run_and_check(t, n, 32, 8, 128 ** -0.5, dtype, window=512, softcap=50.0, max_query_len=1,
                  max_seq_len=4000)


@pytest.mark.gpu
@pytest.mark.parametrize("H,Hkv,d,window", [(32, 8, 128, None), (32, 8, 64, None),
                                            (4, 1, 256, 512), (4, 1, 256, None)])
def test_gpu_fresh_rows(rng, H, Hkv, d, window):
    """The whole-prompt path as the GPU runs it (tensor-memory copies on sm90): two whole
    prompts (one past 2,048 tokens) and a chunk after a context, the prompts' cache blocks NaN;
    at Llama-3-8B, Llama-3.2-1B and Gemma 3 heads (a sliding window on a local layer)."""
    seq_lens, q_lens = [2100, 333, 900], [2100, 333, 100]
    t, n = make_case(rng, seq_lens, q_lens, H, Hkv, d, d, 16, "bf16")
    fk, fv = fresh_rows(t, seq_lens, q_lens)
    poison_whole_prompts(t, seq_lens, q_lens)
    run_and_check(t, n, H, Hkv, d ** -0.5, "bf16", window, max_query_len=2100,
                  max_seq_len=2100, fresh=(fk, fv))
    assert counters_zero(t["q"].device)


@pytest.mark.gpu
def test_gpu_gemma3_shapes(rng):
    """Gemma 3 270M heads (4:1, Dh 256, sliding window 512): chunked prefill and decode."""
    t, n = make_case(rng, [1200, 700, 90], [400, 700, 1], 4, 1, 256, 256, 16, "bf16")
    run_and_check(t, n, 4, 1, 256 ** -0.5, "bf16", window=512, max_query_len=700,
                  max_seq_len=1200)
    t, n = make_case(rng, [1200, 3000], [1, 1], 4, 1, 256, 256, 16, "bf16")
    run_and_check(t, n, 4, 1, 256 ** -0.5, "bf16", window=512, max_query_len=1,
                  max_seq_len=3000)
    run_and_check(t, n, 4, 1, 256 ** -0.5, "bf16", max_query_len=1, max_seq_len=3000)
    # a chunk after a long context (a global layer: no window): 19 + 3 tiles of one KV head,
    # so the launcher splits each tile's keys (the shipped configs)
    t, n = make_case(rng, [3300, 40], [300, 40], 4, 1, 256, 256, 16, "bf16")
    run_and_check(t, n, 4, 1, 256 ** -0.5, "bf16", max_query_len=300, max_seq_len=3300)
    run_and_check(t, n, 4, 1, 256 ** -0.5, "bf16", softcap=30.0, max_query_len=300,
                  max_seq_len=3300)
    # a window wide enough to split under it: the front tiles go to the last split
    run_and_check(t, n, 4, 1, 256 ** -0.5, "bf16", window=1000, max_query_len=300,
                  max_seq_len=3300)
    assert counters_zero(t["q"].device)


@pytest.mark.gpu
def test_gpu_gemma3_long_chunk_split(rng, split_counts):
    """A 2100-token chunk after 3000 keys at Gemma 3 heads: the t4096 bucket (2049 tokens and
    up), whose sm90 tile has 128 rows (the split merge goes 64 rows at a time), and 66 tiles,
    which a GPU of more CUs splits (an H100's 132: in two). With and without a window wide
    enough to split under."""
    t, n = make_case(rng, [5100], [2100], 4, 1, 256, 256, 16, "bf16")
    run_and_check(t, n, 4, 1, 256 ** -0.5, "bf16", max_query_len=2100, max_seq_len=5100)
    run_and_check(t, n, 4, 1, 256 ** -0.5, "bf16", window=1500, softcap=30.0,
                  max_query_len=2100, max_seq_len=5100)
    assert counters_zero(t["q"].device)
    from forge.runtime import device

    info = attn._device_info()
    for keys in (5100, 1500):   # a global layer's keys, the window's
        plan = attn._prefill_plan("nvidia", 256, 256, 4, 2, info.lds_bytes, 2100, keys)
        if device.current_arch() == "sm90":
            assert plan["BLOCK_M"] == 128, plan  # the shipped t4096 tiles
    if info.num_cus > 2100 // plan["BQ"] + 1:
        assert min(split_counts) > 1, split_counts


@pytest.mark.gpu
def test_gpu_cache_beyond_int32(rng):
    """num_blocks * block_size * Hkv * Dh > 2^31: the sequences live in the last blocks."""
    bs, hkv, d, H = 16, 1, 128, 4
    per_block = bs * hkv * d
    nb = (1 << 31) // per_block + 64
    assert nb * per_block > 2 ** 31
    k = torch.zeros((nb, bs, hkv, d), dtype=torch.float16, device="cuda")
    v = torch.zeros_like(k)
    seq_lens = [40, 77]  # queries: the 40-token prompt, and the last 3 of the 77
    nblk = [-(-L // bs) for L in seq_lens]
    ids = rng.permutation(np.arange(nb - 32, nb))[:sum(nblk)]
    bt = np.zeros((2, max(nblk)), np.int32)
    bt[0, :nblk[0]], bt[1, :nblk[1]] = ids[:nblk[0]], ids[nblk[0]:]
    used = torch.from_numpy(ids.astype(np.int64)).cuda()
    k[used] = torch.randn((len(ids), bs, hkv, d), device="cuda").half()
    v[used] = torch.randn((len(ids), bs, hkv, d), device="cuda").half()
    # A small dense copy of the touched blocks for the reference (same block ids, remapped).
    remap = {int(b): i for i, b in enumerate(ids)}
    bt_small = np.vectorize(lambda b: remap.get(int(b), 0))(bt).astype(np.int32)
    k_small = k[used].float().cpu().numpy()
    v_small = v[used].float().cpu().numpy()
    qsl = np.array([0, 40, 43], np.int32)
    q = torch.randn((43, H * d), device="cuda").half()
    args = (q, k, v, torch.from_numpy(qsl).cuda(),
            torch.tensor(seq_lens, dtype=torch.int32, device="cuda"), torch.from_numpy(bt).cuda(),
            H, hkv, d ** -0.5)
    got = attn.attention(*args, max_query_len=40, max_seq_len=77).float().cpu().numpy()
    want = ref_attention(q.float().cpu().numpy(), k_small, v_small, qsl, seq_lens, bt_small, H,
                         hkv, d ** -0.5)
    np.testing.assert_allclose(got, want, atol=4e-3, rtol=4e-3)
    # decode through the same far blocks, split
    qd = q[[39, 42]].contiguous()
    qsl_d = np.array([0, 1, 2], np.int32)
    got = attn.attention(qd, k, v, torch.from_numpy(qsl_d).cuda(), args[4], args[5], H, hkv,
                         d ** -0.5, max_query_len=1, max_seq_len=77, partition_size=16)
    want = ref_attention(qd.float().cpu().numpy(), k_small, v_small, qsl_d, seq_lens, bt_small,
                         H, hkv, d ** -0.5)
    np.testing.assert_allclose(got.float().cpu().numpy(), want, atol=4e-3, rtol=4e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [1, 0])
def test_gpu_decode_long_context_repeated(rng, decode_cfg, fused):
    """Llama heads, contexts up to 20000 with the automatic split (dozens of splits: the merge
    runs several chunks), 20 launches in a row: every output equals the first bit for bit and
    the reference, and the arrival counters are zero afterwards. A broken release/acquire in the
    fused merge shows up here as an occasional stale partial."""
    decode_cfg(FUSED_REDUCE=fused)
    t, n = make_case(rng, [20000, 3000, 64], [1, 1, 1], 32, 8, 128, 128, 16, "bf16")
    first = run_and_check(t, n, 32, 8, 128 ** -0.5, "bf16", max_query_len=1,
                          max_seq_len=20000).clone()
    for _ in range(20):
        again = attn.attention(t["q"], t["k_cache"], t["v_cache"], t["query_start_loc"],
                               t["seq_lens"], t["block_tables"], 32, 8, 128 ** -0.5,
                               max_query_len=1, max_seq_len=20000)
        assert torch.equal(again, first)
    torch.cuda.synchronize()
    assert counters_zero(t["q"].device)


@pytest.mark.gpu
def test_gpu_decode_in_cuda_graph(rng):
    """The engine's use (runtime/graphs.py): decode captured once with max_seq_len = 32768 and
    block tables 2048 wide, replayed with new lengths and tables written into the same buffers.
    Each replay matches the reference for that step's batch."""
    H_, HKV_, d, bs, B = 32, 8, 128, 16, 4
    W = 32768 // bs
    dev = "cuda"
    q = torch.zeros((B, H_ * d), dtype=torch.bfloat16, device=dev)
    qsl = torch.arange(B + 1, dtype=torch.int32, device=dev)
    sl = torch.ones(B, dtype=torch.int32, device=dev)
    bt = torch.zeros((B, W), dtype=torch.int32, device=dev)
    steps = [[512, 7, 1300, 1], [513, 8, 1301, 2000]]
    cases = [make_case(rng, lens, [1] * B, H_, HKV_, d, d, bs, "bf16", spare_blocks=0)
             for lens in steps]
    # one cache for both steps' blocks: step s's blocks live at offset s * nb
    nb = max(c[0]["k_cache"].shape[0] for c in cases)
    k = torch.zeros((2 * nb, bs, HKV_, d), dtype=torch.bfloat16, device=dev)
    v = torch.zeros_like(k)
    for s_, (tc, _) in enumerate(cases):  # NaN in every slot no sequence owns, block 0 too
        k[s_ * nb: s_ * nb + tc["k_cache"].shape[0]] = tc["k_cache"]
        v[s_ * nb: s_ * nb + tc["v_cache"].shape[0]] = tc["v_cache"]

    def step():
        return attn.attention(q, k, v, qsl, sl, bt, H_, HKV_, d ** -0.5, max_query_len=1,
                              max_seq_len=32768)

    def load(s_):
        tc, _ = cases[s_]
        q.copy_(tc["q"])
        sl.copy_(tc["seq_lens"])
        bt.zero_()
        tbl = tc["block_tables"].clone()
        tbl[tbl > 0] += s_ * nb
        bt[:, : tbl.shape[1]] = tbl

    load(0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
        step()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = step()
    for s_ in (0, 1, 0):
        load(s_)
        g.replay()
        torch.cuda.synchronize()
        _, nc = cases[s_]
        want = ref_attention(nc["q"], nc["k_cache"], nc["v_cache"], nc["qsl"], nc["seq_lens"],
                             nc["block_tables"], H_, HKV_, d ** -0.5)
        atol, rtol = TOL["bf16"]
        np.testing.assert_allclose(out.float().cpu().numpy(), want, atol=atol, rtol=rtol)
    assert counters_zero(q.device)


# ----------------------------------------------------------------------------------------------
# rope fused into decode (attention(..., rope=rope.fused_args(...)))


def _fused_rope_case(rng, seq_lens, H, Hkv, dk, dv, bs, dtype, rot, style, ff=None, q_lens=None):
    """A decode batch whose query tokens' own K/V are not in the cache (their slots hold NaN):
    this step's unrotated q, k [T, Hkv*dk] and v [T, Hkv*dv] come as column slices of one fused
    qkv output, as from the qkv projection. Returns (tensors, numpy, RopeSpec, slots, reference
    q / k rotated in float64)."""
    from forge.runtime.backend import RopeSpec
    from tests.kernels.test_rope import ref_rotate

    q_lens = q_lens or [1] * len(seq_lens)
    t, n = make_case(rng, seq_lens, q_lens, H, Hkv, dk, dv, bs, dtype)
    T = int(sum(q_lens))
    pos, slots = [], []
    for b, L in enumerate(seq_lens):
        for i in range(q_lens[b]):
            p = L - q_lens[b] + i
            pos.append(p)
            slots.append(int(n["block_tables"][b, p // bs]) * bs + p % bs)
    pos, slots = np.array(pos), np.array(slots, np.int64)
    kc, vc = t["k_cache"], t["v_cache"]
    kc.view(-1, Hkv, dk)[torch.from_numpy(slots).to(DEV)] = float("nan")
    vc.view(-1, Hkv, dv)[torch.from_numpy(slots).to(DEV)] = float("nan")
    tdt = TORCH_DT[dtype]
    qkv = torch.from_numpy(rng.standard_normal((T, (H + Hkv) * dk + Hkv * dv)).astype(np.float32))
    qkv = qkv.to(tdt).to(DEV)
    q, k, v = qkv.split([H * dk, Hkv * dk, Hkv * dv], dim=1)
    fft = None if ff is None else torch.tensor(ff, dtype=torch.float32, device=DEV)
    spec = RopeSpec(rot_dim=rot, base=10000.0, style=style, freq_factors=fft)
    t.update(q=q, k=k, v=v, positions=torch.from_numpy(pos.astype(np.int32)).to(DEV),
             slot_mapping=torch.from_numpy(slots).to(DEV))
    q64 = q.double().cpu().numpy()
    k64 = k.double().cpu().numpy()
    want_q = ref_rotate(q64.reshape(T, H, dk), pos, rot, 10000.0, style, 1.0, ff).reshape(T, H * dk)
    want_k = ref_rotate(k64.reshape(T, Hkv, dk), pos, rot, 10000.0, style, 1.0, ff)
    return t, n, spec, slots, want_q, want_k


def _run_fused(t, spec, H, Hkv, dk, scale, **kw):
    from forge.kernels import rope as rope_mod

    f = rope_mod.fused_args(t["q"], t["k"], t["v"], t["positions"], t["k_cache"], t["v_cache"],
                            t["slot_mapping"], spec, H, Hkv, dk)
    return attn.attention(t["q"], t["k_cache"], t["v_cache"], t["query_start_loc"],
                          t["seq_lens"], t["block_tables"], H, Hkv, scale, rope=f, **kw)


@pytest.mark.parametrize("dtype,style,rot,partition,fused,window,softcap", [
    ("fp32", "norm", 64, None, 1, None, None),   # one split: the program writes the output
    ("fp32", "neox", 32, 16, 1, None, None),     # partial rotary; splits, fused merge
    ("bf16", "norm", 64, 16, 0, 7, None),        # reduce kernel; window
    ("bf16", "neox", 64, 24, 1, None, 20.0),     # softcap; partition not a multiple of BLOCK_N
    ("fp16", "norm", 48, 16, 1, 40, None),
])
def test_decode_fused_rope(rng, decode_cfg, dtype, style, rot, partition, fused, window,
                           softcap):
    """rope fused into decode equals rope then attention in float64: the rotated k and v land in
    the cache at the tokens' slots (nothing else written), the output attends the query's own key
    (its slot was NaN before the launch, so the kernel must not read it), sequences of 1 key
    (only the query's own) to several splits; freq factors on the norm cases."""
    decode_cfg(FUSED_REDUCE=fused)
    H, Hkv, dk = 8, 2, 64
    seq_lens = [1, 2, 17, 33, 70]
    ff = rng.uniform(1.0, 4.0, size=rot // 2) if style == "norm" else None
    t, n, spec, slots, want_q, want_k = _fused_rope_case(rng, seq_lens, H, Hkv, dk, dk, 16,
                                                          dtype, rot, style, ff)
    kc_before = t["k_cache"].float().cpu().numpy().copy()
    got = _run_fused(t, spec, H, Hkv, dk, 0.125, sliding_window=window, softcap=softcap,
                     max_query_len=1, max_seq_len=max(seq_lens), partition_size=partition)
    atol, rtol = TOL[dtype]
    T = len(seq_lens)
    kc4 = t["k_cache"].double().cpu().numpy()
    vc4 = t["v_cache"].double().cpu().numpy()
    kcn, vcn = kc4.reshape(-1, Hkv, dk), vc4.reshape(-1, Hkv, dk)
    np.testing.assert_allclose(kcn[slots], want_k, atol=atol, rtol=rtol, err_msg="k_cache")
    np.testing.assert_array_equal(vcn[slots], t["v"].double().cpu().numpy().reshape(T, Hkv, dk))
    others = np.setdiff1d(np.arange(kcn.shape[0]), slots)
    np.testing.assert_array_equal(kcn[others], kc_before.reshape(-1, Hkv, dk)[others])
    # reference: the float64 rotation, the cache as the kernel left it (k rounded as stored)
    want = ref_attention(want_q, kc4, vc4, n["qsl"], n["seq_lens"], n["block_tables"], H, Hkv,
                         0.125, window, softcap)
    g = got.float().cpu().numpy()
    assert np.isfinite(g).all(), "non-finite output (the query's own slot read?)"
    np.testing.assert_allclose(g, want, atol=atol, rtol=rtol)
    assert counters_zero(t["q"].device)


@pytest.mark.gpu
@pytest.mark.parametrize("seq_len", [4000, 37])
def test_gpu_decode_fused_rope_llama_heads_shipped_table(rng, monkeypatch, tmp_path, seq_len):
    """The launch of an 8B decode step at batch 1, from the shipped table (no override):
    Llama-3 heads (32:8, d 128), bf16, a graph capacity of 8192. On sm90 that is the d128_g4
    entry: 16 splits of 64-key tiles pipelined 4 deep, the reduce kernel, the rope fused from
    batch 1 (no rope kernel launched). Equals rope then attention in float64."""
    from forge.kernels import tuning

    empty = tmp_path / "no_user_table.json"  # no user table in front of the shipped ones
    empty.write_text(json.dumps({"kernels": {}}))
    monkeypatch.setenv("FORGE_TUNING_TABLE", str(empty))
    tuning.clear_cache()  # (and again at the end, so later tests load the tables they see)
    try:
        _check_shipped_batch1_launch(rng, monkeypatch, seq_len)
    finally:
        tuning.clear_cache()


def _check_shipped_batch1_launch(rng, monkeypatch, seq_len):
    from forge.kernels import rope as rope_mod

    calls = []
    real = rope_mod.apply
    monkeypatch.setattr(rope_mod, "apply", lambda *a, **k: calls.append(1) or real(*a, **k))
    H, Hkv, dk = 32, 8, 128
    sm90 = DEV == "cuda" and torch.cuda.get_device_capability() == (9, 0)
    if sm90:
        plan = attn._decode_plan("nvidia", dk, dk, H // Hkv, 2)
        assert plan["max_splits"] == 16 and not plan["fused"] and plan["rope_min_b"] == 1
    t, n, spec, slots, want_q, want_k = _fused_rope_case(rng, [seq_len], H, Hkv, dk, dk, 16,
                                                          "bf16", dk, "norm")
    got = _run_fused(t, spec, H, Hkv, dk, dk ** -0.5, max_query_len=1, max_seq_len=8192)
    if sm90:
        assert not calls, "sm90 d128_g4 fuses the rope at batch 1"
    kcn = t["k_cache"].double().cpu().numpy().reshape(-1, Hkv, dk)
    atol, rtol = TOL["bf16"]
    np.testing.assert_allclose(kcn[slots], want_k, atol=atol, rtol=rtol, err_msg="k_cache")
    want = ref_attention(want_q, t["k_cache"].double().cpu().numpy(),
                         t["v_cache"].double().cpu().numpy(), n["qsl"], n["seq_lens"],
                         n["block_tables"], H, Hkv, dk ** -0.5, None, None)
    g = got.float().cpu().numpy()
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g, want, atol=atol, rtol=rtol)
    assert counters_zero(t["q"].device)


@pytest.mark.parametrize("knob", [{"QK_CHUNK": 16}, {"ROPE_MIN_B": 3}])
def test_fused_rope_falls_back_to_the_rope_kernel(rng, decode_cfg, monkeypatch, knob):
    """Where the decode kernel cannot fuse (q chunked out of registers: QK_CHUNK < BLOCK_DK),
    where the config fuses only from ROPE_MIN_B sequences on (2 here), and for prefill,
    rope=... runs the rope kernel first: the same meaning."""
    from forge.kernels import rope as rope_mod

    H, Hkv, dk = 4, 2, 64
    decode_cfg(**knob)
    calls = []
    real = rope_mod.apply
    monkeypatch.setattr(rope_mod, "apply", lambda *a, **k: calls.append(1) or real(*a, **k))
    # decode; then prefill / mixed: 3 new tokens of one sequence, 1 of another
    for seq_lens, q_lens, style in (([3, 20], [1, 1], "neox"), ([9, 20], [3, 1], "norm")):
        t, n, spec, slots, want_q, want_k = _fused_rope_case(rng, seq_lens, H, Hkv, dk, dk, 16,
                                                              "fp32", 64, style, q_lens=q_lens)
        got = _run_fused(t, spec, H, Hkv, dk, 0.125, max_query_len=max(q_lens), max_seq_len=20)
        kc4 = t["k_cache"].double().cpu().numpy()
        vc4 = t["v_cache"].double().cpu().numpy()
        np.testing.assert_allclose(kc4.reshape(-1, Hkv, dk)[slots], want_k, atol=2e-5, rtol=2e-5)
        want = ref_attention(want_q, kc4, vc4, n["qsl"], n["seq_lens"], n["block_tables"], H,
                             Hkv, 0.125)
        np.testing.assert_allclose(got.cpu().numpy(), want, atol=2e-5, rtol=2e-5)
    assert len(calls) == 2


def test_fused_rope_bad_arguments(rng):
    """rope.fused_args checks what rope.rope does (ValueError naming the argument)."""
    from forge.kernels import rope as rope_mod

    t, n, spec, slots, _, _ = _fused_rope_case(rng, [3, 5], 4, 2, 64, 64, 16, "fp32", 64, "norm")
    with pytest.raises(ValueError, match="k:"):
        rope_mod.fused_args(t["q"], t["k"][:, :10], t["v"], t["positions"], t["k_cache"],
                            t["v_cache"], t["slot_mapping"], spec, 4, 2, 64)
    with pytest.raises(ValueError, match="positions"):
        rope_mod.fused_args(t["q"], t["k"], t["v"], t["positions"][:1], t["k_cache"],
                            t["v_cache"], t["slot_mapping"], spec, 4, 2, 64)
