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

import sys
from typing import Any

import numpy as np

from forge.runtime.backend import ForwardBatch


def ladder(max_bs: int) -> list[int]:
    rungs = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]
    return [r for r in rungs if r < max_bs] + [max_bs]


class _Rung:
    """The static inputs of one batch size: a device buffer, its pinned host twin, and views."""

    def __init__(self, torch, bs: int, W: int, device):
        # int32 words: tokens | positions | seq_lens | pad to even | slots (int64) | block tables
        # | meta (n real rows, advance flag)
        self.bs, self.W = bs, W
        o_slot = 3 * bs + (3 * bs) % 2
        o_bt = o_slot + 2 * bs
        o_meta = o_bt + bs * W
        n = o_meta + 2
        self.dev = torch.zeros(n, dtype=torch.int32, device=device)
        self.host_t = torch.zeros(n, dtype=torch.int32, pin_memory=True)
        self.host = self.host_t.numpy()
        self.o_slot, self.o_bt, self.o_meta = o_slot, o_bt, o_meta
        d = self.dev
        self.views = {
            "token_ids": d[0:bs],
            "positions": d[bs:2 * bs],
            "seq_lens": d[2 * bs:3 * bs],
            "slot_mapping": d[o_slot:o_bt].view(torch.int64),
            "block_tables": d[o_bt:o_meta].view(bs, W),
            "meta": d[o_meta:],
        }
        self.next_ids = torch.zeros(bs, dtype=torch.int64, device=device)  # the in-graph argmax
        self.host[2 * bs:3 * bs] = 1  # padding rows: one token of context
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
        n, bs, h = host["num_seqs"], self.bs, self.host
        h[0:n] = host["token_ids"]
        h[n:bs] = 0
        h[bs:bs + n] = host["positions"]
        h[bs + n:2 * bs] = 0
        h[2 * bs:2 * bs + n] = host["seq_lens"]
        h[2 * bs + n:3 * bs] = 1
        slots = h[self.o_slot:self.o_bt].view(np.int64)
        slots[:n] = host["slot_mapping"]
        slots[n:] = 0
        bt = h[self.o_bt:self.o_meta].reshape(bs, self.W)
        src = host["block_tables"]
        bt[:n, : src.shape[1]] = src
        bt[:n, src.shape[1]:] = 0
        bt[n:] = 0
        h[self.o_meta:] = (n, 0)   # n real rows; flag 0: the graph computes these inputs
        self.dev.copy_(self.host_t, non_blocking=True)

    def advance_inputs(self) -> None:
        from forge.kernels.step import advance_inputs

        v = self.views
        advance_inputs(v["token_ids"], v["positions"], v["seq_lens"], v["slot_mapping"], v["meta"],
                       self.next_ids)


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
        model, kv = self.engine.model, self.engine.kv.layers
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(self.rungs), desc="capturing decode graphs", unit="graph",
                       file=sys.stderr, leave=False)
        stream = torch.cuda.Stream(self.device)
        for bs in sorted(self.rungs, reverse=True):
            rung = self.by_size[bs]
            rung.dev.copy_(rung.host_t)
            batch = rung.batch(self.max_len)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            be = self.engine.backend
            with torch.cuda.stream(stream):
                for _ in range(2):  # compile and warm every kernel outside the capture
                    rung.advance_inputs()   # flag 0 (zeroed buffer): changes nothing
                    be.argmax(model.forward(batch, kv), out=rung.next_ids)
                    rung.views["meta"].zero_()
            torch.cuda.current_stream(self.device).wait_stream(stream)
            torch.cuda.synchronize(self.device)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=self.pool):
                rung.advance_inputs()
                out = model.forward(batch, kv)
                be.argmax(out, out=rung.next_ids)
            if self.pool is None:
                self.pool = g.pool()
            rung.graph, rung.logits = g, out
            if bar:
                bar.update(1)
        if bar:
            bar.close()
        torch.cuda.synchronize(self.device)

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
