"""Decode captured as CUDA/HIP graphs over a ladder of batch sizes.

A decode step (every sequence computes one token and samples) with B sequences replays the graph
of the smallest rung >= B. Padding rows compute token 0 at position 0 into the null block (block
0, never handed out), so they touch nothing real. The forward's inputs live in static device
buffers that each step overwrites with small host-to-device copies; the graph's logits buffer is
read back as a view. Sampling runs eagerly after the replay (its history widths vary per step).

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
    out = [r for r in rungs if r < max_bs]
    return out + [max_bs]


class DecodeGraphs:
    def __init__(self, engine, max_batch: int | None = None):
        import torch

        self.torch = torch
        self.engine = engine
        be = engine.backend
        self.device = be.device
        self.block_size = engine.block_size
        self.max_len = engine.max_model_len
        self.W = -(-self.max_len // self.block_size)
        self.rungs = ladder(min(max_batch or engine.max_num_seqs, engine.max_num_seqs))
        n = self.rungs[-1]
        dev = self.device
        self.buf = {
            "token_ids": torch.zeros(n, dtype=torch.int32, device=dev),
            "positions": torch.zeros(n, dtype=torch.int32, device=dev),
            "query_start_loc": torch.arange(n + 1, dtype=torch.int32, device=dev),
            "seq_lens": torch.ones(n, dtype=torch.int32, device=dev),
            "block_tables": torch.zeros((n, self.W), dtype=torch.int32, device=dev),
            "slot_mapping": torch.zeros(n, dtype=torch.int64, device=dev),
            "logits_indices": torch.arange(n, dtype=torch.int64, device=dev),
        }
        self.graphs: dict[int, Any] = {}
        self.logits: dict[int, Any] = {}
        self.pool = None

    def _batch(self, bs: int) -> ForwardBatch:
        b = self.buf
        return ForwardBatch(
            token_ids=b["token_ids"][:bs], positions=b["positions"][:bs],
            query_start_loc=b["query_start_loc"][: bs + 1], seq_lens=b["seq_lens"][:bs],
            block_tables=b["block_tables"][:bs], slot_mapping=b["slot_mapping"][:bs],
            logits_indices=b["logits_indices"][:bs], max_query_len=1, max_seq_len=self.max_len,
            num_seqs=bs, num_tokens=bs)

    def capture(self, progress: bool = False) -> None:
        torch = self.torch
        model, kv = self.engine.model, self.engine.kv.layers
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(self.rungs), desc="capturing decode graphs", unit="graph",
                       file=sys.stderr, leave=False)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        for bs in sorted(self.rungs, reverse=True):
            batch = self._batch(bs)
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
            self.graphs[bs] = g
            self.logits[bs] = out
            if bar:
                bar.update(1)
        if bar:
            bar.close()
        torch.cuda.synchronize(self.device)

    def can_run(self, host: dict) -> bool:
        return (self.graphs and host["max_query_len"] == 1 and host["num_seqs"] <= self.rungs[-1]
                and len(host["logits_indices"]) == host["num_seqs"]
                and host["block_tables"].shape[1] <= self.W)

    def run(self, host: dict):
        torch = self.torch
        n = host["num_seqs"]
        bs = next(r for r in self.rungs if r >= n)
        b = self.buf

        def put(name: str, arr: np.ndarray, fill: int) -> None:
            full = np.full((bs,) + arr.shape[1:], fill, dtype=arr.dtype)
            full[:n] = arr
            b[name][:bs].copy_(torch.from_numpy(full), non_blocking=True)

        put("token_ids", host["token_ids"], 0)
        put("positions", host["positions"], 0)
        put("seq_lens", host["seq_lens"], 1)
        put("slot_mapping", host["slot_mapping"], 0)
        bt = host["block_tables"]
        full = np.zeros((bs, self.W), dtype=np.int32)
        full[:n, : bt.shape[1]] = bt
        b["block_tables"][:bs].copy_(torch.from_numpy(full), non_blocking=True)
        self.graphs[bs].replay()
        return self.logits[bs][:n]
