"""Decode captured as CUDA/HIP graphs over a ladder of batch sizes.

A decode step (every sequence computes one token and samples) with B sequences replays the graph
of the smallest rung >= B. Padding rows compute token 0 at position 0 into the null block (block
0, never handed out), so they touch nothing real. Each rung owns one int32 device buffer holding
all of the step's inputs (token ids, positions, context lengths, slots, block tables) as views;
a step fills a pinned host copy of it and sends it with ONE host-to-device copy, then replays.
The graph's logits buffer is read back as a view; the greedy argmax is part of the graph (below),
other sampling runs eagerly after the replay.

The attention kernel's grid depends on `max_seq_len`; graphs are captured with the largest
context the engine admits, and the kernel skips the partitions past each sequence's length.

Each graph begins with `kernels.step.advance_inputs` and ends with the greedy argmax of its
logits (into the rung's `next_ids`). The buffer's two control words (n, flag) make a replay
after a fill compute the filled step (fill sets flag 0, the advance kernel leaves the inputs and
sets it to 1), and a replay WITHOUT a fill compute the next step of the same n sequences: each
moves on one position (positions, context lengths and slots + 1) with `next_ids` as its token.
That is run-ahead (Engine, `run_ahead=True`, `advance`): step k+1 is launched before the host has
seen step k's tokens, so the GPU computes it while the host finishes step k (scheduler update,
detokenization, the next schedule). Greedy steps need no kernel outside the graph; a sampled
step's ids are copied into `next_ids` first. `fetch` copies the sampled ids to pinned host
memory before that launch, so reading them does not wait for step k+1.
"""
from __future__ import annotations

import contextlib
import gc
import sys
import threading
from typing import Any

import numpy as np

from forge.runtime.backend import ForwardBatch
from forge.runtime.batch import pad_batch_arrays


def ladder(max_bs: int) -> list[int]:
    rungs = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]
    return [r for r in rungs if r < max_bs] + [max_bs]


def aligned_spans(words: dict[str, int], align: int = 4) -> tuple[dict[str, tuple[int, int]], int]:
    """Lay named int32 sections out one after another, each starting on a multiple of `align`
    words (4: 16 bytes). Returns ({name: (start, end)}, total words).

    A graph's input views then start 16-byte aligned, as a fresh eager tensor does. Triton
    specialises a pointer argument on 16-byte alignment, so a view that is not aligned compiles
    its kernel a second time (run 25's census: decode attention at batch 1, whose positions
    started 4 bytes into the buffer)."""
    spans, o = {}, 0
    for name, n in words.items():
        o = -(-o // align) * align
        spans[name] = (o, o + n)
        o += n
    return spans, o


_INT64 = ("slot_mapping", "logits_indices")


def _input_buffers(torch, words: dict[str, int], rows: int, W: int, device):
    """One int32 device buffer of the named sections (`aligned_spans`), its pinned host twin, and
    each section's view in both: int64 for slot_mapping / logits_indices (their words count two
    per value), [rows, W] for block_tables. Returns (dev, host_t, host views, device views)."""
    spans, n = aligned_spans(words)
    dev = torch.zeros(n, dtype=torch.int32, device=device)
    host_t = torch.zeros(n, dtype=torch.int32, pin_memory=True)
    h = host_t.numpy()
    host, views = {}, {}
    for name, (a, b) in spans.items():
        hv, dv = h[a:b], dev[a:b]
        if name in _INT64:
            hv, dv = hv.view(np.int64), dv.view(torch.int64)
        elif name == "block_tables":
            hv, dv = hv.reshape(rows, W), dv.view(rows, W)
        host[name], views[name] = hv, dv
    return dev, host_t, host, views


class _Rung:
    """The static inputs of one batch size: a device buffer, its pinned host twin, and views."""

    def __init__(self, torch, bs: int, W: int, device):
        # sections: slots (int64) | tokens | positions | seq_lens | block tables | meta (n real
        # rows, advance flag)
        self.bs, self.W = bs, W
        self.dev, self.host_t, self.host, self.views = _input_buffers(
            torch, {"slot_mapping": 2 * bs, "token_ids": bs, "positions": bs, "seq_lens": bs,
                    "block_tables": bs * W, "meta": 2}, bs, W, device)
        self.next_ids = torch.zeros(bs, dtype=torch.int64, device=device)  # the in-graph argmax
        self.host["seq_lens"][:] = 1  # padding rows: one token of context
        self.query_start_loc = torch.arange(bs + 1, dtype=torch.int32, device=device)
        self.logits_indices = torch.arange(bs, dtype=torch.int64, device=device)
        self.graph = None
        self.logits = None

    def batch(self, max_len: int) -> ForwardBatch:
        v = self.views
        return ForwardBatch(
            token_ids=v["token_ids"], positions=v["positions"],
            query_start_loc=self.query_start_loc, seq_lens=v["seq_lens"],
            block_tables=v["block_tables"], slot_mapping=v["slot_mapping"],
            logits_indices=self.logits_indices, max_query_len=1, max_seq_len=max_len,
            num_seqs=self.bs, num_tokens=self.bs)

    def fill(self, host: dict) -> None:
        n, h = host["num_seqs"], self.host
        for name, pad in (("token_ids", 0), ("positions", 0), ("seq_lens", 1),
                          ("slot_mapping", 0)):
            h[name][:n] = host[name]
            h[name][n:] = pad
        bt, src = h["block_tables"], host["block_tables"]
        bt[:n, : src.shape[1]] = src
        bt[:n, src.shape[1]:] = 0
        bt[n:] = 0
        h["meta"][:] = (n, 0)   # n real rows; flag 0: the graph computes these inputs
        self.dev.copy_(self.host_t, non_blocking=True)

    def advance_inputs(self) -> None:
        from forge.kernels.step import advance_inputs

        v = self.views
        advance_inputs(v["token_ids"], v["positions"], v["seq_lens"], v["slot_mapping"], v["meta"],
                       self.next_ids)


_BLAS_READY: set = set()


def _init_blas(torch, device) -> None:
    """Create this thread's cuBLAS / cuBLASLt state for `device` outside any capture (once per
    device and thread: torch keeps a handle per thread, and a graph captured on first use may be
    captured from a caller's thread other than the one that loaded the engine).

    A capture may take a path its eager warm runs do not: quantized linears of T >= DEQUANT_T
    call dequantize + torch.matmul only inside a capture (kernels/matmul.py). If that is the
    process's first cuBLAS call, cublasCreate runs inside the capture and fails
    (CUBLAS_STATUS_NOT_INITIALIZED, then "operation failed due to a previous error during
    capture"): H100, Llama-3.2-1B Q4_K_M, the first prefill graph of the warm-up, once the
    warm-up's eager steps stopped computing every row's logits (run 26)."""
    key = (str(device), threading.get_ident())
    if key in _BLAS_READY:
        return
    torch.cuda.current_blas_handle()
    for dt in (torch.bfloat16, torch.float16, torch.float32):
        a = torch.ones(16, 16, dtype=dt, device=device)
        torch.matmul(a, a)
        torch.addmm(a[0], a, a)   # with a bias: the cuBLASLt path
    torch.cuda.synchronize(device)
    _BLAS_READY.add(key)


def _capture_graph(torch, device, pool, fn, warm=None, warm_runs: int = 1):
    """Run `warm` (default `fn`) `warm_runs` times on a side stream, taking the capture's paths
    (`precompile.as_if_captured`: every kernel the capture launches is compiled and loaded
    outside it, and none it does not launch), then capture `fn` into a new CUDAGraph on `pool`
    (None: a new pool). Returns (graph, fn's result in the graph's memory)."""
    from forge.kernels import precompile

    _init_blas(torch, device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream), precompile.as_if_captured():
        for _ in range(warm_runs):
            (warm or fn)()
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)
    g = torch.cuda.CUDAGraph()
    # No garbage collection inside the capture: a collection there can free another engine's
    # graphs and memory (an LLM dropped without gc.collect()), CUDA calls that invalidate the
    # capture ("operation failed due to a previous error during capture"; seen on H100 in the
    # GPU/CPU parity test, which builds engines one after another in one process: a fatal abort
    # "Garbage-collecting" after it). torch.cuda.graph no longer collects before it begins
    # (torch.compiler.config.force_cudagraph_gc is off by default), so a dead engine's cycle
    # goes whenever a collection comes: between captures, not inside one.
    enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.cuda.graph(g, pool=pool):
            out = fn()
    finally:
        if enabled:
            gc.enable()
    return g, out


class DecodeGraphs:
    def __init__(self, engine, max_batch: int | None = None):
        import torch

        self.torch = torch
        self.engine = engine
        self.device = engine.backend.device
        self.max_len = engine.max_model_len
        self.W = -(-self.max_len // engine.block_size)
        self.rungs = ladder(min(max_batch or engine.max_num_seqs, engine.max_num_seqs))
        self.by_size: dict[int, _Rung] = {bs: _Rung(torch, bs, self.W, self.device) for bs in self.rungs}
        self.pool = None
        # pinned landing buffers of `fetch` (one step's sampled ids and logprobs)
        self._pin_ids = torch.empty(self.rungs[-1], dtype=torch.int64, pin_memory=True)
        self._pin_lps = torch.empty(self.rungs[-1], dtype=torch.float32, pin_memory=True)

    def capture(self, progress: bool = False) -> None:
        torch = self.torch
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(self.rungs), desc="capturing decode graphs", unit="graph",
                       file=sys.stderr, leave=False)
        for bs in sorted(self.rungs, reverse=True):
            rung = self.by_size[bs]
            rung.dev.copy_(rung.host_t)

            def warm(rung=rung):
                self._step(rung)    # flag 0 (zeroed buffer): the advance changes nothing
                rung.views["meta"].zero_()

            # one warm run: every kernel is compiled (ahead, or by this run) and loaded by it
            g, out = _capture_graph(torch, self.device, self.pool,
                                    lambda rung=rung: self._step(rung), warm)
            if self.pool is None:
                self.pool = g.pool()
            rung.graph, rung.logits = g, out
            if bar:
                bar.update(1)
        if bar:
            bar.close()
        torch.cuda.synchronize(self.device)

    def _step(self, rung: _Rung) -> Any:
        """What a decode graph holds: advance the inputs, the forward pass, the greedy argmax;
        returns the logits."""
        rung.advance_inputs()
        out = self.engine.model.forward(rung.batch(self.max_len), self.engine.kv.layers)
        self.engine.backend.argmax(out, out=rung.next_ids)
        return out

    def dry_run(self) -> None:
        """Each rung's step as its capture takes it, for `precompile.ahead()` (launches compile
        only)."""
        from forge.kernels import precompile

        with precompile.as_if_captured():
            for bs in self.rungs:
                self._step(self.by_size[bs])

    def can_run(self, host: dict) -> bool:
        return (host["max_query_len"] == 1 and host["num_seqs"] <= self.rungs[-1]
                and len(host["logits_indices"]) == host["num_seqs"]
                and host["block_tables"].shape[1] <= self.W)

    def _rung(self, n: int) -> _Rung:
        return self.by_size[next(r for r in self.rungs if r >= n)]

    def run(self, host: dict) -> Any:
        n = host["num_seqs"]
        rung = self._rung(n)
        rung.fill(host)
        rung.graph.replay()
        return rung.logits[:n]

    def greedy_ids(self, n: int) -> Any:
        """The in-graph argmax of the last replay on n sequences (device, int64 [n])."""
        return self._rung(n).next_ids[:n]

    def advance(self, n: int, ids: Any) -> Any:
        """Launch the step after the last one run on n sequences, every sequence one token on,
        with token ids `ids` (device, [n]; `greedy_ids(n)` needs no copy). The caller checked
        that each next position lies in the block of the current one (the slot is this slot +
        1). Stream-ordered after that step, so it reads its inputs after the step used them."""
        rung = self._rung(n)
        if ids.data_ptr() != rung.next_ids.data_ptr():
            rung.next_ids[:n].copy_(ids)
        rung.graph.replay()
        return rung.logits[:n]

    def fetch(self, ids: Any, logprobs: Any = None) -> "_Fetch":
        """Start copying sampled ids (and logprobs) to the host; `.wait()` gives them as lists."""
        return _Fetch(self, ids, logprobs)


class _Fetch:
    def __init__(self, g: DecodeGraphs, ids, lps):
        n = ids.numel()
        self.ids = g._pin_ids[:n]
        self.ids.copy_(ids, non_blocking=True)
        self.lps = None
        if lps is not None:
            self.lps = g._pin_lps[:n]
            self.lps.copy_(lps, non_blocking=True)
        self.event = g.torch.cuda.Event()
        self.event.record()

    def wait(self) -> tuple[list[int], list[float] | None]:
        self.event.synchronize()
        return self.ids.tolist(), (self.lps.tolist() if self.lps is not None else None)


# ------------------------------------------------------------------------------------------------
# prefill


def prefill_token_ladder(max_tokens: int) -> list[int]:
    """Token counts prefill graphs exist for: 16, 32, 64, 128, then four rungs per doubling
    (160, 192, 224, 256, 320, ...), so a step pads by less than a quarter of its size; the
    last rung is `max_tokens` itself."""
    rungs, t = [16, 32, 64, 128], 128
    while t < max_tokens:
        rungs += [t + t // 4 * i for i in range(1, 5)]
        t *= 2
    return [r for r in rungs if r < max_tokens] + [max_tokens]


def prefill_seq_ladder(max_seqs: int) -> list[int]:
    """Sequence counts (padding sequence included) of prefill graphs: 1, 2, 4, .., max_seqs."""
    rungs, b = [], 1
    while b < max_seqs:
        rungs.append(b)
        b *= 2
    return rungs + [max_seqs]


def prefill_block_cols(max_len: int, block_size: int, max_tokens: int) -> int:
    """Block-table width of the prefill graphs: a real sequence's blocks (max_len tokens), and
    at least as many as the padding sequence's context (up to max_tokens - 1 tokens, all in
    block 0) makes the attention kernel read: a narrower table would be read past its rows."""
    return max(-(-max_len // block_size), -(-max_tokens // block_size))


def prefill_size(host: dict, t_rungs: list[int], b_rungs: list[int],
                 max_block_cols: int) -> tuple[int, int] | None:
    """The padded (tokens, sequences) of a step (`build_batch_arrays`'s dict) on these ladders,
    or None: a decode-only step (max_query_len 1), or one too large for the ladders."""
    T, B = host["num_tokens"], host["num_seqs"]
    if host["max_query_len"] <= 1 or T > t_rungs[-1] or host["block_tables"].shape[1] > max_block_cols:
        return None
    t = next(r for r in t_rungs if r >= T)
    need = B + (t > T)
    if need > b_rungs[-1]:
        return None
    return t, next(r for r in b_rungs if r >= need)


class _PrefillRung:
    """The static inputs of one (tokens, sequences) size: one int32 device buffer (the
    `ForwardBatch` arrays as views), its pinned host twin, and an event marking when the last
    upload from that twin was done (a step that samples nothing does not wait for the GPU, so
    the next fill must not overwrite a copy still queued)."""

    def __init__(self, torch, T: int, B: int, W: int, device):
        self.T, self.B, self.W = T, B, W
        # sections: slots (int64) | logits rows (int64) | tokens | positions | qsl | seq_lens |
        # block tables
        self.dev, self.host_t, self.host, self.views = _input_buffers(
            torch, {"slot_mapping": 2 * T, "logits_indices": 2 * B, "token_ids": T, "positions": T,
                    "query_start_loc": B + 1, "seq_lens": B, "block_tables": B * W}, B, W, device)
        self.uploaded = torch.cuda.Event()
        self.uploaded.record()
        self.graph = None

    def batch(self, max_len: int) -> ForwardBatch:
        return ForwardBatch(**self.views, max_query_len=self.T, max_seq_len=max_len,
                            num_seqs=self.B, num_tokens=self.T)

    def fill(self, host: dict) -> None:
        padded = pad_batch_arrays(host, self.T, self.B, self.W)
        self.uploaded.synchronize()
        for name, hv in self.host.items():
            hv[...] = padded[name]
        self.dev.copy_(self.host_t, non_blocking=True)
        self.uploaded.record()


def _empty_step() -> dict:
    """A step with no tokens: filled into a rung, it is all padding (for warming and capture)."""
    return {"token_ids": np.zeros(0, np.int32), "positions": np.zeros(0, np.int32),
            "query_start_loc": np.zeros(1, np.int32), "seq_lens": np.zeros(0, np.int32),
            "block_tables": np.zeros((0, 1), np.int32), "slot_mapping": np.zeros(0, np.int64),
            "logits_indices": np.zeros(0, np.int64), "max_query_len": 0, "max_seq_len": 0,
            "num_seqs": 0, "num_tokens": 0}


class PrefillGraphs:
    """Prefill and mixed steps (some sequence computes more than one token) replayed from CUDA
    graphs, one per padded (tokens, sequences) size.

    An eager prefill step is bound by the host: Triton's per-launch dispatch is ~0.1 ms and a
    step makes ~5 launches per layer (H100, Llama-3.2-1B at 512 tokens: 22-27 ms of host time
    for ~9 ms of kernels). A step of T tokens over B sequences pads to the smallest rung
    T' >= T of `prefill_token_ladder` and B' >= B (+1 when T' > T, for the padding sequence) of
    `prefill_seq_ladder` (see `pad_batch_arrays`), fills that graph's input buffer with one
    host-to-device copy and replays it. The logits of the sampled rows land in one buffer shared
    by every graph. Graphs are captured on first use (an eager warm-up run on the padding
    inputs, which touch only the null block, then the capture: ~3 eager steps of time) and at
    load for the warm-up sizes; past `max_graphs` of them, new sizes run eagerly.

    Inside a capture the quantized linears of T >= DEQUANT_T take dequantize + cuBLAS (see
    kernels/matmul.py): with no per-launch host cost, the path with less GPU time wins.
    `pdl`: capture the kernels with programmatic dependent launch as every other launch takes it
    (kernels/pdl.py; None: unless FORGE_PDL=decode, which captures these without it as before
    run 26). One launch mode everywhere compiles each kernel once."""

    def __init__(self, engine, max_graphs: int = 64, max_seqs: int = 64, pdl: bool | None = None):
        import torch

        self.torch = torch
        self.engine = engine
        self.device = engine.backend.device
        self.max_len = engine.max_model_len
        self.t_rungs = prefill_token_ladder(engine.max_num_batched_tokens)
        self.W = prefill_block_cols(self.max_len, engine.block_size, self.t_rungs[-1])
        self.b_rungs = prefill_seq_ladder(min(engine.max_num_seqs, max_seqs) + 1)
        self.max_graphs = int(max_graphs)
        self.by_size: dict[tuple[int, int], _PrefillRung] = {}
        self._spare: dict[tuple[int, int], _PrefillRung] = {}   # made by dry_run, not captured
        self.pool = None    # the decode graphs' pool, taken at the first capture (`capture`)
        vocab = engine.cfg.vocab_size
        self.logits = torch.empty((self.b_rungs[-1], vocab), dtype=torch.float32, device=self.device)
        self.num_replays = 0
        self.num_eager = 0    # eligible steps that ran eagerly (graph limit reached)
        if pdl is None:
            from forge.kernels import pdl as pdl_mod

            pdl = pdl_mod.mode() != "decode"
        self.pdl = bool(pdl)

    def size_for(self, host: dict) -> tuple[int, int] | None:
        """The (tokens, sequences) graph a step would replay, or None if it runs eagerly."""
        return prefill_size(host, self.t_rungs, self.b_rungs, self.W)

    def _rung(self, T: int, B: int) -> _PrefillRung:
        """A new rung of (T, B) filled with padding only (or the one `dry_run` made)."""
        rung = self._spare.pop((T, B), None)
        if rung is None:
            rung = _PrefillRung(self.torch, T, B, self.W, self.device)
            rung.fill(_empty_step())
        return rung

    def _step(self, rung: _PrefillRung) -> None:
        """What a prefill graph holds: the forward pass, its logits into the shared buffer."""
        out = self.engine.model.forward(rung.batch(self.max_len), self.engine.kv.layers)
        self.logits[:rung.B].copy_(out)

    def _launch_mode(self):
        from forge.kernels import pdl

        return contextlib.nullcontext() if self.pdl else pdl.suspended()

    def capture(self, T: int, B: int) -> _PrefillRung:
        rung = self._rung(T, B)
        if self.pool is None:   # the decode graphs' (captured after this object was made)
            self.pool = getattr(self.engine.graphs, "pool", None)
        with self._launch_mode():
            rung.graph, _ = _capture_graph(self.torch, self.device, self.pool,
                                           lambda: self._step(rung))
        if self.pool is None:
            self.pool = rung.graph.pool()
        self.by_size[(T, B)] = rung
        return rung

    def _keys(self, sizes: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The graphs (padded sizes) that steps of (tokens, sequences) in `sizes` replay, not
        captured yet, as many as `max_graphs` leaves room for."""
        keys = []
        for T, B in sizes:
            bt = np.zeros((B, 1), np.int32)
            k = self.size_for({"num_tokens": T, "num_seqs": B, "max_query_len": 2,
                               "block_tables": bt})
            if k is not None and k not in keys and k not in self.by_size:
                keys.append(k)
        return keys[: max(0, self.max_graphs - len(self.by_size))]

    def dry_run(self, sizes: list[tuple[int, int]]) -> None:
        """The steps `warm(sizes)` will capture, as their captures take them, for
        `precompile.ahead()` (launches compile only). Their rungs are kept for the captures:
        the same buffers, so the same pointer alignments."""
        from forge.kernels import precompile

        for k in self._keys(sizes):
            rung = self._spare[k] = self._rung(*k)
            with self._launch_mode(), precompile.as_if_captured():
                self._step(rung)

    def warm(self, sizes: list[tuple[int, int]], progress: bool = False) -> None:
        """Capture the graphs of steps of (tokens, sequences) in `sizes` ahead of their use."""
        keys = self._keys(sizes)
        bar = None
        if progress and keys:
            from tqdm import tqdm

            bar = tqdm(total=len(keys), desc="capturing prefill graphs", unit="graph",
                       file=sys.stderr, leave=False)
        for k in keys:
            self.capture(*k)
            if bar:
                bar.update(1)
        if bar:
            bar.close()

    def run(self, host: dict) -> Any | None:
        """Replay the step's graph (capturing it first if new); its logits [S, vocab] (a view of
        the shared buffer, valid until the next replay), or None: run it eagerly."""
        key = self.size_for(host)
        if key is None:
            return None
        rung = self.by_size.get(key)
        if rung is None:
            if len(self.by_size) >= self.max_graphs:
                self.num_eager += 1
                return None
            rung = self.capture(*key)
        rung.fill(host)
        rung.graph.replay()
        self.num_replays += 1
        return self.logits[: len(host["logits_indices"])]
