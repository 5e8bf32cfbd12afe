"""A scheduled step -> the index arrays of a `ForwardBatch` (NumPy, on the host).

Sequence b computes tokens [start_b, start_b + n_b) of its request: they sit at
positions start_b.., its context after the step is seq_len_b = start_b + n_b, and token t at
position p goes to slot block_table[b][p // block_size] * block_size + p % block_size.
"""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from forge.runtime.backend import ForwardBatch
from forge.runtime.scheduler import SchedulerOutput


def build_batch_arrays(out: SchedulerOutput, block_size: int,
                       num_block_cols: int | None = None) -> dict[str, Any]:
    """The fields of `ForwardBatch` for a step, as NumPy arrays and ints.

    `num_block_cols` pads `block_tables` to a fixed width (e.g. for captured graphs); by default
    it is the most blocks any sequence of the step holds."""
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    seqs = out.seqs
    B = len(seqs)
    if B == 0:
        raise ValueError("out: nothing is scheduled in this step")
    starts = np.fromiter((s.start for s in seqs), np.int64, B)
    lens = np.fromiter((s.num_new_tokens for s in seqs), np.int64, B)
    qsl = np.zeros(B + 1, np.int64)
    np.cumsum(lens, out=qsl[1:])
    T = int(qsl[-1])
    seq_lens = starts + lens

    token_ids = np.fromiter(
        itertools.chain.from_iterable(s.request.token_slice(s.start, s.end) for s in seqs),
        np.int32, T)
    seq_of_token = np.repeat(np.arange(B), lens)
    positions = np.arange(T, dtype=np.int64) + np.repeat(starts - qsl[:-1], lens)

    nblocks = np.fromiter((len(s.request.block_ids) for s in seqs), np.int64, B)
    short = np.nonzero(nblocks * block_size < seq_lens)[0]
    if short.size:
        b = int(short[0])
        raise ValueError(f"request {seqs[b].request.request_id!r} holds {int(nblocks[b])} "
                         f"blocks, too few for {int(seq_lens[b])} tokens")
    W = int(nblocks.max())
    if num_block_cols is not None:
        if num_block_cols < W:
            raise ValueError(f"num_block_cols={num_block_cols} but a sequence holds {W} blocks")
        W = num_block_cols
    block_tables = np.zeros((B, W), np.int32)
    flat = np.fromiter(itertools.chain.from_iterable(s.request.block_ids for s in seqs),
                       np.int32, int(nblocks.sum()))
    block_tables[np.arange(W)[None, :] < nblocks[:, None]] = flat

    blk = block_tables[seq_of_token, positions // block_size].astype(np.int64)
    slot_mapping = blk * block_size + positions % block_size
    sample = np.fromiter((s.sample for s in seqs), bool, B)
    logits_indices = (qsl[1:] - 1)[sample]

    return {
        "token_ids": token_ids,
        "positions": positions.astype(np.int32),
        "query_start_loc": qsl.astype(np.int32),
        "seq_lens": seq_lens.astype(np.int32),
        "block_tables": block_tables,
        "slot_mapping": slot_mapping,
        "logits_indices": logits_indices.astype(np.int64),
        "max_query_len": int(lens.max()),
        "max_seq_len": int(seq_lens.max()),
        "num_seqs": B,
        "num_tokens": T,
    }


def make_forward_batch(out: SchedulerOutput, block_size: int, backend: Any,
                       num_block_cols: int | None = None) -> ForwardBatch:
    """`build_batch_arrays` moved onto a backend, with the NumPy arrays kept in `host`."""
    host = build_batch_arrays(out, block_size, num_block_cols)
    dev = {k: backend.asarray(v) if isinstance(v, np.ndarray) else v for k, v in host.items()}
    return ForwardBatch(**dev, host=host)


def pad_batch_arrays(host: dict[str, Any], num_tokens: int, num_seqs: int,
                     num_block_cols: int) -> dict[str, Any]:
    """`host` (from `build_batch_arrays`) padded to exactly `num_tokens` tokens, `num_seqs`
    sequences and `num_block_cols` block-table columns, for a graph captured at that size.

    The padding computes nothing that reaches a real row and writes nothing a real sequence
    reads: the extra tokens form one padding sequence (token 0 at positions 0, 1, ..; its
    context is just those tokens) whose block table is all block 0 (the null block, never
    handed out) and whose K/V go to slot 0; the sequences past it have no tokens (and no
    context). `logits_indices` is padded with row 0; the caller keeps its first S rows.
    Needs num_seqs >= B + 1 when num_tokens > T (room for the padding sequence), and
    num_block_cols * block_size >= num_tokens - T (attention reads the padding sequence's
    block-table row up to its context length; runtime/graphs.py prefill_block_cols)."""
    T, B = host["num_tokens"], host["num_seqs"]
    S = len(host["logits_indices"])
    bt = host["block_tables"]
    pad = num_tokens - T
    if pad < 0 or num_seqs < B + (pad > 0) or num_block_cols < bt.shape[1]:
        raise ValueError(f"cannot pad a step of {T} tokens, {B} sequences, {bt.shape[1]} block "
                         f"columns to {num_tokens}, {num_seqs}, {num_block_cols}")
    token_ids = np.zeros(num_tokens, np.int32)
    token_ids[:T] = host["token_ids"]
    positions = np.zeros(num_tokens, np.int32)
    positions[:T] = host["positions"]
    positions[T:] = np.arange(pad, dtype=np.int32)
    qsl = np.full(num_seqs + 1, num_tokens, np.int32)
    qsl[:B + 1] = host["query_start_loc"]
    seq_lens = np.zeros(num_seqs, np.int32)
    seq_lens[:B] = host["seq_lens"]
    if pad:
        seq_lens[B] = pad
    block_tables = np.zeros((num_seqs, num_block_cols), np.int32)
    block_tables[:B, : bt.shape[1]] = bt
    slot_mapping = np.zeros(num_tokens, np.int64)
    slot_mapping[:T] = host["slot_mapping"]
    logits_indices = np.zeros(num_seqs, np.int64)
    logits_indices[:S] = host["logits_indices"]
    return {
        "token_ids": token_ids, "positions": positions, "query_start_loc": qsl,
        "seq_lens": seq_lens, "block_tables": block_tables, "slot_mapping": slot_mapping,
        "logits_indices": logits_indices,
        "max_query_len": max(host["max_query_len"], pad),
        "max_seq_len": max(host["max_seq_len"], pad),
        "num_seqs": num_seqs, "num_tokens": num_tokens,
    }
