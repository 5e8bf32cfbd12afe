"""Continuous batching: which requests compute how many tokens this step.

There is no prefill phase. Each request has tokens (prompt + output so far) and a count of
those whose K/V is computed; a step gives a request up to `min(tokens left, budget left)` new
tokens, and a request whose computed count reaches its length samples one token.

Each `schedule()`:
1. Running requests, oldest first, each as many tokens as the budget allows (a decode is one
   token, a long prompt is cut into chunks). A request must hold blocks for its new tokens; when
   the pool runs dry, the newest running request is preempted (blocks freed, computed count back
   to 0, output kept, to the front of the waiting queue) until it fits.
2. Then, unless something was preempted, waiting requests in FIFO order while budget, sequence
   slots and blocks allow. A request starts with the longest run of its full blocks found in the
   prefix cache; those tokens count as computed.

Full blocks are registered in the prefix cache when scheduled, so a request admitted later in
the same step can share them. This relies on each step running as one forward in which every
layer writes the step's K/V (the rope op) before it reads any (the attention op).

The engine runs the forward, then `update()` advances the computed counts, appends the sampled
tokens, applies stop-token and length limits and frees finished requests. `abort()`/`finish()`
called between `schedule` and `update` take effect in `update` (the forward writes the blocks).
"""
from __future__ import annotations

import bisect
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from forge.errors import RequestError
from forge.runtime.kv_cache import BlockPool, hash_block
from forge.runtime.request import Request, RequestStatus


@dataclass(slots=True)
class ScheduledSeq:
    """One request's share of a step: tokens [start, start + num_new_tokens) are computed."""

    request: Request
    start: int
    num_new_tokens: int
    sample: bool

    def __post_init__(self) -> None:
        if self.num_new_tokens < 1 or self.start < 0:
            raise ValueError(f"bad scheduled span start={self.start} n={self.num_new_tokens}")

    @property
    def end(self) -> int:
        return self.start + self.num_new_tokens


@dataclass(slots=True)
class SchedulerOutput:
    """A step's plan. `seqs` are in batch order; those with `sample` produce a token, in the
    order of `sampling` (= the rows of `logits_indices`)."""

    seqs: list[ScheduledSeq] = field(default_factory=list)
    num_tokens: int = 0
    preempted: list[Request] = field(default_factory=list)
    num_cached_tokens: int = 0  # prefix-cache hits taken by requests admitted this step

    @property
    def num_seqs(self) -> int:
        return len(self.seqs)

    @property
    def is_empty(self) -> bool:
        return not self.seqs

    @property
    def sampling(self) -> list[Request]:
        return [s.request for s in self.seqs if s.sample]


class Scheduler:
    def __init__(self, pool: BlockPool, max_num_seqs: int, max_num_batched_tokens: int,
                 max_model_len: int, long_prefill_chunk: int | None = None,
                 eos_token_ids: Iterable[int] = ()):
        chunk = max_num_batched_tokens if long_prefill_chunk is None else long_prefill_chunk
        for name, v in (("max_num_seqs", max_num_seqs), ("max_model_len", max_model_len),
                        ("max_num_batched_tokens", max_num_batched_tokens),
                        ("long_prefill_chunk", chunk)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.pool = pool
        self.block_size = pool.block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.long_prefill_chunk = chunk
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        # A sequence can grow to this many tokens: the context, and no more than the cache holds
        # (the last sampled token needs no K/V).
        self.max_seq_len = min(max_model_len, pool.capacity_tokens + 1)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # sorted by arrival, oldest first
        self.requests: dict[str, Request] = {}  # unfinished requests by id
        self._arrivals = itertools.count()
        self._in_flight: SchedulerOutput | None = None
        self._deferred: dict[str, RequestStatus] = {}
        self.num_preemptions = 0
        self.num_cached_tokens = 0

    # ---- requests -----------------------------------------------------------------------
    def add(self, request: Request) -> None:
        """Queue a request; RequestError if it could never be served."""
        if request.request_id in self.requests:
            raise ValueError(f"request_id {request.request_id!r} is already in use")
        if request.status is not RequestStatus.WAITING or request.num_computed_tokens \
                or request.block_ids:
            raise ValueError(f"request {request.request_id!r} is not a fresh request")
        n, ctx, cap = request.num_prompt_tokens, self.max_model_len, self.pool.capacity_tokens
        if n == 0:
            raise RequestError("prompt is empty: give at least one token")
        if n >= ctx:
            raise RequestError(f"prompt has {n} tokens but the context is {ctx} "
                               f"(at most {ctx - 1} leave room to generate)")
        k = request.max_tokens
        if k is not None and n + k > ctx:
            raise RequestError(f"prompt has {n} tokens and max_tokens is {k}: {n + k} tokens "
                               f"do not fit in the context of {ctx}")
        need = n if k is None else n + k - 1  # the last sampled token needs no K/V
        if need > cap:
            what = f"prompt has {n} tokens" + ("" if k is None else f" and max_tokens is {k}")
            raise RequestError(f"{what}: the KV cache needs room for {need} tokens but holds "
                               f"only {cap}; lower max_tokens or give the cache more memory")
        request.arrival = next(self._arrivals)
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def abort(self, request_id: str) -> Request | None:
        """Stop a request (finish reason "abort"). None if it is unknown or already finished."""
        return self.finish(request_id, RequestStatus.FINISHED_ABORTED)

    def finish(self, request_id: str, status: RequestStatus) -> Request | None:
        """End a request with a FINISHED_* status (e.g. the engine found a stop string) and
        free its blocks. During a step this happens in `update`."""
        if not status.is_finished:
            raise ValueError(f"finish() needs a FINISHED_* status, got {status}")
        req = self.requests.get(request_id)
        if req is None:
            return None
        if self._in_flight is not None and req.status is RequestStatus.RUNNING:
            self._deferred.setdefault(request_id, status)
            return req
        self._end(req, status)
        if req in self.waiting:
            self.waiting.remove(req)
        else:
            self.running.remove(req)
        return req

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    # ---- one step -----------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        if self._in_flight is not None:
            raise RuntimeError("schedule() called again before update() of the previous step")
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        pool = self.pool
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(req.num_tokens_to_compute, budget, self.long_prefill_chunk)
            need = pool.blocks_needed(req.num_computed_tokens + n) - len(req.block_ids)
            new = pool.allocate(need) if need > 0 else []
            while new is None:
                victim = self.running.pop()  # the newest; never one scheduled this step
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is req:
                    break
                new = pool.allocate(need)
            if new is None:
                break
            req.block_ids.extend(new)
            self._commit(req, n, out)
            budget -= n
            i += 1

        while (not out.preempted and self.waiting and budget > 0
               and len(self.running) < self.max_num_seqs):
            req = self.waiting[0]
            hits: list[int] = []
            if pool.enable_prefix_caching:
                max_hit = (req.num_tokens - 1) // self.block_size  # leave >= 1 token to compute
                self._hash_blocks(req, max_hit)
                hits = pool.lookup(req.block_hashes[:max_hit])
            computed = len(hits) * self.block_size
            n = min(req.num_tokens - computed, budget, self.long_prefill_chunk)
            need = pool.blocks_needed(computed + n) - len(hits)
            if pool.num_free < need + pool.num_revivals(hits):
                break
            self.waiting.popleft()
            pool.touch(hits)
            req.block_ids = hits + pool.allocate(need)
            req.num_cached_blocks = len(hits)
            req.num_computed_tokens = computed
            req.status = RequestStatus.RUNNING
            bisect.insort(self.running, req, key=_arrival)
            out.num_cached_tokens += computed
            self._commit(req, n, out)
            budget -= n

        if out.is_empty and self.requests:
            raise RuntimeError(f"scheduler made no progress with {len(self.running)} running and "
                               f"{len(self.waiting)} waiting requests ({pool.num_free} free "
                               f"blocks): this is a bug")
        self.num_cached_tokens += out.num_cached_tokens
        if not out.is_empty:
            self._in_flight = out
        return out

    def update(self, out: SchedulerOutput,
               sampled: Mapping[str, int | Sequence[int]] | Sequence[int],
               logprobs: Mapping[str, float | Sequence[float]] | Sequence[float] | None = None
               ) -> list[Request]:
        """Apply a finished step: `sampled` (and optionally `logprobs`) map each request of
        `out.sampling` to its new token(s), or list them in that order. Returns the requests
        that finished in this step (their blocks are already freed)."""
        if out.is_empty:
            return []
        if out is not self._in_flight:
            raise RuntimeError("update() must get the output of the last schedule()")
        sampled = self._by_id(out, sampled, "sampled")
        logprobs = self._by_id(out, logprobs, "logprobs") if logprobs is not None else None
        self._in_flight = None
        finished: list[Request] = []
        for rid, status in self._deferred.items():
            req = self.requests.get(rid)
            if req is not None:
                self._end(req, status)
                finished.append(req)
        self._deferred.clear()
        for s in out.seqs:
            req = s.request
            if req.is_finished:
                continue
            if req.num_computed_tokens != s.start:
                raise RuntimeError(f"request {req.request_id!r} changed during the step")
            req.num_computed_tokens = s.end
            if not s.sample:
                continue
            toks = _as_list(sampled[req.request_id])
            lps = _as_list(logprobs[req.request_id]) if logprobs is not None else None
            if not toks:
                raise ValueError(f"sampled: no token for request {req.request_id!r}")
            if lps is not None and len(lps) != len(toks):
                raise ValueError(f"request {req.request_id!r}: {len(toks)} tokens but "
                                 f"{len(lps)} logprobs")
            for j, tok in enumerate(toks):
                req.output_token_ids.append(int(tok))
                if lps is not None:
                    req.output_logprobs.append(float(lps[j]))
                status = self._stop_status(req, int(tok))
                if status is not None:
                    self._end(req, status)
                    finished.append(req)
                    break
        if finished:
            self.running = [r for r in self.running if not r.is_finished]
        return finished

    def rollback(self, out: SchedulerOutput) -> None:
        """Undo a step whose forward failed (e.g. out of device memory): its requests go back to
        the waiting queue to be recomputed, keeping their outputs, and the prefix cache forgets
        blocks whose K/V may be half-written. Nothing is lost; the next step can run."""
        if out is not self._in_flight:
            raise RuntimeError("rollback() must get the output of the last schedule()")
        self._in_flight = None
        for s in reversed(out.seqs):
            req = s.request
            if req.status is RequestStatus.RUNNING and req in self.running:
                self.running.remove(req)
                self._preempt(req)
        self.pool.reset_prefix_cache()
        for rid, status in self._deferred.items():
            if rid in self.requests:
                self.finish(rid, status)
        self._deferred.clear()

    # ---- internals ----------------------------------------------------------------------
    def _commit(self, req: Request, n: int, out: SchedulerOutput) -> None:
        start = req.num_computed_tokens
        end = start + n
        if self.pool.enable_prefix_caching:
            full = end // self.block_size
            if full > req.num_cached_blocks:
                self._hash_blocks(req, full)
                for j in range(req.num_cached_blocks, full):
                    self.pool.cache_block(req.block_ids[j], req.block_hashes[j])
                req.num_cached_blocks = full
        out.seqs.append(ScheduledSeq(req, start, n, end == req.num_tokens))
        out.num_tokens += n

    def _hash_blocks(self, req: Request, upto: int) -> None:
        """Extend req.block_hashes to its first `upto` full blocks."""
        bs, hashes = self.block_size, req.block_hashes
        while len(hashes) < upto:
            j = len(hashes)
            hashes.append(hash_block(hashes[j - 1] if j else None,
                                     req.token_slice(j * bs, (j + 1) * bs)))

    def _preempt(self, req: Request) -> None:
        self.pool.free(req.block_ids)
        req.block_ids = []
        req.num_cached_blocks = 0
        req.num_computed_tokens = 0
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def _end(self, req: Request, status: RequestStatus) -> None:
        if req.block_ids:
            self.pool.free(req.block_ids)
        req.block_ids = []
        req.num_cached_blocks = 0
        req.finish(status)
        self.requests.pop(req.request_id, None)

    def _stop_status(self, req: Request, tok: int) -> RequestStatus | None:
        p = req.params
        if tok in (getattr(p, "stop_token_ids", None) or ()):
            return RequestStatus.FINISHED_STOPPED
        if tok in self.eos_token_ids and not getattr(p, "ignore_eos", False):
            return RequestStatus.FINISHED_STOPPED
        if self.length_reached(req):
            return RequestStatus.FINISHED_LENGTH
        return None

    def length_reached(self, req: Request, more: int = 0) -> bool:
        """Whether `req` ends on its length (max_tokens or the context) once it holds `more`
        tokens beyond those it has."""
        k = req.max_tokens
        return ((k is not None and req.num_output_tokens + more >= k)
                or req.num_tokens + more >= self.max_seq_len)

    @staticmethod
    def _by_id(out: SchedulerOutput, values, name: str) -> Mapping:
        ids = [r.request_id for r in out.sampling]
        if not isinstance(values, Mapping):
            values = list(values)
            if len(values) != len(ids):
                raise ValueError(f"{name}: {len(values)} values for {len(ids)} sampling requests")
            return dict(zip(ids, values))
        missing = [i for i in ids if i not in values]
        if missing:
            raise ValueError(f"{name}: no entry for requests {missing}")
        return values


def _arrival(req: Request) -> int:
    return req.arrival


def _as_list(x) -> list:
    if isinstance(x, (list, tuple)):
        return list(x)
    if hasattr(x, "tolist"):
        x = x.tolist()
        return x if isinstance(x, list) else [x]
    return [x]
