"""Decode captured as CUDA/HIP graphs over a ladder of batch sizes.

A decode step (every sequence computes one token and samples) with B sequences replays the graph
of the smallest rung >= B. Padding rows compute token 0 at position 0 into the null block (block
0, never handed out), so they touch nothing real. Each rung owns one int32 device buffer holding
all of the step's inputs (token ids, positions, context lengths, slots, block tables) as views;
a step fills a pinned host copy of it and sends it with ONE host-to-device copy, then replays.
The graph's logits buffer is read back as a view. Sampling runs eagerly after the replay.

The attention kernel's grid depends on `max_seq_len`; graphs are captured with the largest
context the engine admits, and the kernel skips the partitions past each sequence's length.
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
        self.bs, self.W = bs, W
        o_slot = 3 * bs + (3 * bs) % 2
        o_bt = o_slot + 2 * bs
        n = o_bt + bs * W
        self.dev = torch.zeros(n, dtype=torch.int32, device=device)
        self.host_t = torch.zeros(n, dtype=torch.int32, pin_memory=True)
        self.host = self.host_t.numpy()
        self.o_slot, self.o_bt = o_slot, o_bt
        d = self.dev
        self.views = {
            "token_ids": d[0:bs],
            "positions": d[bs:2 * bs],
            "seq_lens": d[2 * bs:3 * bs],
            "slot_mapping": d[o_slot:o_bt].view(torch.int64),
            "block_tables": d[o_bt:].view(bs, W),
        }
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
        bt = h[self.o_bt:].reshape(bs, self.W)
        src = host["block_tables"]
        bt[:n, : src.shape[1]] = src
        bt[:n, src.shape[1]:] = 0
        bt[n:] = 0
        self.dev.copy_(self.host_t, non_blocking=True)


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
            with torch.cuda.stream(stream):
                for _ in range(2):  # compile and warm every kernel outside the capture
                    model.forward(batch, kv)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            torch.cuda.synchronize(self.device)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=self.pool):
                out = model.forward(batch, kv)
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

    def run(self, host: dict) -> Any:
        n = host["num_seqs"]
        rung = self.by_size[next(r for r in self.rungs if r >= n)]
        rung.fill(host)
        rung.graph.replay()
        return rung.logits[:n]
