"""The engine: step() = schedule -> forward -> sample -> postprocess.

It owns the model, the paged KV cache, the block pool and the scheduler. `add_request` and
`abort` may be called between steps; `step()` returns one `RequestOutput` (with `delta`, the new
text) for every request that produced a token or finished in that step.
"""
from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from forge import hub
from forge.errors import RequestError
from forge.loader.config import ModelConfig
from forge.loader.reader import GGUFFile
from forge.runtime.backend import ForwardBatch, QTensor, SamplingBatch, get_backend
from forge.runtime.batch import build_batch_arrays, make_forward_batch
from forge.runtime.kv_cache import BlockPool, KVCache
from forge.runtime.model import Model
from forge.runtime.plan import build_plan
from forge.runtime.request import Request, RequestOutput, RequestStatus
from forge.runtime.scheduler import Scheduler
from forge.runtime.weights import load_weights
from forge.sampling import SamplingParams
from forge.tokenizer import Tokenizer


@dataclass(slots=True)
class _Track:
    """Per-request detokenization state."""

    decoder: Any
    seed: int
    text: str = ""
    emitted: int = 0   # characters of `text` already handed out as deltas


class Engine:
    def __init__(self, model: str | os.PathLike, device: str = "auto", *, progress: bool = False,
                 max_model_len: int | None = None, max_num_seqs: int | None = None,
                 max_num_batched_tokens: int | None = None, kv_cache_tokens: int | None = None,
                 block_size: int = 16, enable_prefix_caching: bool = True, run_ahead: bool = True,
                 **backend_kwargs):
        t0 = time.perf_counter()
        # seconds per phase of the load (forge bench prints them)
        self.load_phases: dict[str, float] = {}
        self.path = hub.resolve(model)
        self.file = GGUFFile(self.path)
        self.cfg: ModelConfig = ModelConfig.from_gguf(self.file)
        self.tokenizer = Tokenizer.from_metadata(self.file.metadata)
        self.backend = get_backend(device, **backend_kwargs)
        t = self._lap("open", t0)
        weights = load_weights(self.file, self.cfg, self.backend, progress=progress)
        self.plan = build_plan(self.cfg, weights, self.backend)
        t = self._lap("weights", t)
        self.model = Model(self.plan, self.backend)
        cfg, be = self.cfg, self.backend
        on_gpu = be.name != "cpu"
        self.max_model_len = min(cfg.context_length, max_model_len or (cfg.context_length if on_gpu else 8192))
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs or (256 if on_gpu else 64)
        self.max_num_batched_tokens = max_num_batched_tokens or (8192 if on_gpu else 2048)
        if kv_cache_tokens is None:
            kv_cache_tokens = self._default_kv_tokens()
        num_blocks = max(2, -(-int(kv_cache_tokens) // block_size) + 1)
        self.kv = KVCache(be, cfg.num_layers, num_blocks, block_size, cfg.num_kv_heads,
                          cfg.head_dim, cfg.v_head_dim)
        self.pool = BlockPool(num_blocks, block_size, enable_prefix_caching)
        self._lap("kv_cache", t)
        if progress:
            import sys

            print(f"forge: {cfg.name} ({cfg.arch}) on {be.name}; {self.memory_report()}", file=sys.stderr)
        self.scheduler = Scheduler(
            self.pool,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_model_len=self.max_model_len,
            eos_token_ids=self.tokenizer.eog_ids,
        )
        self._ids = itertools.count()
        self._tracks: dict[str, _Track] = {}
        self.graphs = None
        self.prefill_graphs = None
        # what the load's compile ahead did (Engine._compile_ahead), None where it did not run
        self.compile_ahead: dict | None = None
        # run-ahead decode (see _forward_and_sample): the step launched before the host saw the
        # tokens it depends on, and the schedule it assumed
        self.run_ahead = bool(run_ahead)
        self._ahead: _Ahead | None = None
        self.num_ahead_hits = 0     # steps whose forward was already running when scheduled
        self.num_ahead_misses = 0   # launched ahead, then discarded (a request stopped, arrived..)
        if on_gpu:
            self._warmup(progress)
        self.load_seconds = time.perf_counter() - t0

    def _lap(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.load_phases[name] = round(now - since, 3)
        return now

    def memory_report(self) -> str:
        kv = self.kv.nbytes
        tokens = (self.pool.num_blocks - 1) * self.block_size
        msg = f"KV cache {tokens} tokens in {self.pool.num_blocks - 1} blocks of {self.block_size} ({kv / 2**30:.2f} GiB)"
        wb = getattr(self.backend, "weight_bytes", None)
        if wb:
            msg += f", weights {wb / 2**30:.2f} GiB on device"
        conv = getattr(self.backend, "converted_types", None)
        if conv:
            from gguf import GGMLQuantizationType

            msg += (" (" + ", ".join(f"{n} {GGMLQuantizationType(t).name} tensor{'s' if n > 1 else ''}"
                                     for t, n in sorted(conv.items()))
                    + " held as F32: no GPU kernel for that type)")
        return msg

    def _default_kv_tokens(self) -> int:
        budget = getattr(self.backend, "kv_cache_budget_bytes", None)
        if budget is not None:
            cfg = self.cfg
            per_token = cfg.num_layers * cfg.num_kv_heads * (cfg.head_dim + cfg.v_head_dim) \
                * self.backend.kv_bytes_per_elem
            return max(self.block_size, int(budget(self) // per_token))
        return max(2 * self.max_model_len, 16384)

    # ---- requests -----------------------------------------------------------------------
    def add_request(self, prompt: str | Sequence[int], params: SamplingParams | None = None,
                    request_id: str | None = None) -> str:
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
        if isinstance(prompt, str):
            text, ids = prompt, self.tokenizer.encode(prompt, add_special=True)
        else:
            text, ids = None, [int(t) for t in prompt]
            bad = [t for t in ids if not 0 <= t < self.cfg.vocab_size]
            if bad:
                raise RequestError(f"token id {bad[0]} is outside the vocabulary (size {self.cfg.vocab_size})")
        rid = request_id or f"req-{next(self._ids)}"
        req = Request(rid, ids, params, prompt=text)
        self.scheduler.add(req)
        seed = params.seed if params.seed is not None else _random_seed()
        self._tracks[rid] = _Track(self.tokenizer.stream(), seed)
        return rid

    def abort(self, request_id: str) -> None:
        self.scheduler.abort(request_id)
        self._tracks.pop(request_id, None)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # ---- one step -----------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        out = self.scheduler.schedule()
        if out.is_empty:
            return []
        reqs = out.sampling
        try:
            ids, lps = self._forward_and_sample(out, reqs)
        except BaseException:
            self._ahead = None
            self.scheduler.rollback(out)  # requests wait to be recomputed; nothing is lost
            raise
        finished = self.scheduler.update(out, ids, lps)
        if self._ahead is not None and not self.scheduler.has_unfinished():
            self._ahead = None  # the last request stopped on a token: nothing will use it
            self.num_ahead_misses += 1
        done = {r.request_id for r in finished}
        outputs = []
        for req in reqs:
            outputs.append(self._postprocess(req, req.request_id in done))
        for req in finished:  # aborted during the step, never sampled
            if req not in reqs:
                outputs.append(self._postprocess(req, True))
        return outputs

    def _forward_and_sample(self, out, reqs: list[Request]) -> tuple[list[int], list[float] | None]:
        """Forward and sample one step. With run-ahead (decode graphs, every sequence decoding),
        the NEXT step is launched on the GPU before this step's tokens reach the host: its
        inputs are this step's moved on by one position, with the sampled ids fed on the device
        (DecodeGraphs.advance). If the next schedule is exactly that (same requests, same order,
        one token each), its forward is already done or running; otherwise (a request stopped
        on a token, was aborted or preempted, one arrived) the launched step is discarded.
        Discarding is safe: it wrote K/V only at each request's next position, inside a block
        the request held and that is not full (so not in the prefix cache), ahead in stream
        order of anything a later owner of the block writes; the tokens are the real ones."""
        be = self.backend
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.matches(out):
            self.num_ahead_hits += 1
            logits, graphed = ahead.logits, True
        else:
            if ahead is not None:
                self.num_ahead_misses += 1
            host = build_batch_arrays(out, self.block_size)
            graphed = self.graphs is not None and self.graphs.can_run(host)
            logits = None
            if graphed:
                logits = self.graphs.run(host)
            elif self.prefill_graphs is not None:
                logits = self.prefill_graphs.run(host)
            if logits is None:
                dev = {k: be.asarray(v) if isinstance(v, np.ndarray) else v for k, v in host.items()}
                logits = self.model.forward(ForwardBatch(**dev, host=host), self.kv.layers)
        if not reqs:
            return [], None
        if all(_plain_greedy(r.params) for r in reqs):
            # a decode graph ends with this argmax
            ids = self.graphs.greedy_ids(out.num_seqs) if graphed else be.argmax(logits)
            lps = None
        else:
            ids, lps = be.sample(logits, self._sampling_batch(reqs))
        if graphed and self.run_ahead and self._can_run_ahead(out):
            fetch = self.graphs.fetch(ids, lps)
            self._ahead = _Ahead([(s.request, s.end) for s in out.seqs],
                                 self.graphs.advance(out.num_seqs, ids))
            return fetch.wait()
        return be.to_numpy(ids).tolist(), (be.to_numpy(lps).tolist() if lps is not None else None)

    def _can_run_ahead(self, out) -> bool:
        """Whether the next schedule will likely be `out` moved on by one token per sequence,
        with no new block: every sequence decodes, nothing waits to be admitted, no request ends
        on its length at this step, and each next position is in its current position's block
        (so the next slot is this slot + 1)."""
        if self.scheduler.waiting or out.num_tokens != out.num_seqs:
            return False
        bs = self.block_size
        return all(s.sample and s.end % bs and not self.scheduler.length_reached(s.request, 1)
                   for s in out.seqs)

    def _postprocess(self, req: Request, finished: bool) -> RequestOutput:
        tr = self._tracks.get(req.request_id)
        if tr is None:  # aborted while in flight
            tr = _Track(self.tokenizer.stream(), 0)
        p: SamplingParams = req.params
        if req.output_token_ids and not (req.status is RequestStatus.FINISHED_ABORTED):
            tok = req.output_token_ids[-1]
            if not (finished and tok in self.tokenizer.eog_ids and not p.ignore_eos):
                tr.text += tr.decoder.add(tok)
        if finished:
            tr.text += tr.decoder.flush()
        if p.stop and not finished:
            cut = _find_stop(tr.text, p.stop, max(0, tr.emitted - max(map(len, p.stop))))
            if cut is not None:
                tr.text = tr.text[:cut]
                self.scheduler.finish(req.request_id, RequestStatus.FINISHED_STOPPED)
                finished = True
        if finished:
            hold = 0
        elif p.stop:
            hold = max(map(len, p.stop)) - 1
        else:
            hold = 0
        upto = max(tr.emitted, len(tr.text) - hold)
        delta = tr.text[tr.emitted:upto]
        tr.emitted = upto
        if finished:
            self._tracks.pop(req.request_id, None)
        return RequestOutput(
            request_id=req.request_id, prompt=req.prompt, prompt_token_ids=req.prompt_token_ids,
            text=tr.text, token_ids=list(req.output_token_ids),
            finish_reason=req.finish_reason if finished else None,
            logprobs=list(req.output_logprobs) if p.logprobs else None,
            finished=finished, delta=delta,
        )

    def _sampling_batch(self, reqs: list[Request]) -> SamplingBatch:
        be = self.backend
        n = len(reqs)
        ps = [r.params for r in reqs]
        f32 = lambda xs: be.asarray(np.asarray(xs, dtype=np.float32))  # noqa: E731
        need_pen = any(p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty for p in ps)
        if need_pen:
            prompt = _pad([r.prompt_token_ids if p.repetition_penalty != 1.0 else [] for r, p in zip(reqs, ps)])
            output = _pad([r.output_token_ids for r in reqs])
        else:
            prompt = output = np.empty((n, 0), np.int32)  # no history: penalty kernels skip
        seeds = [self._tracks[r.request_id].seed if r.request_id in self._tracks else 0 for r in reqs]
        steps = [r.num_output_tokens for r in reqs]
        return SamplingBatch(
            temperature=f32([p.temperature for p in ps]),
            top_k=be.asarray(np.asarray([p.top_k for p in ps], dtype=np.int32)),
            top_p=f32([p.top_p for p in ps]),
            min_p=f32([p.min_p for p in ps]),
            repetition_penalty=f32([p.repetition_penalty for p in ps]),
            presence_penalty=f32([p.presence_penalty for p in ps]),
            frequency_penalty=f32([p.frequency_penalty for p in ps]),
            seeds=be.asarray(np.asarray(seeds, dtype=np.int64)),
            steps=be.asarray(np.asarray(steps, dtype=np.int64)),
            prompt_tokens=be.asarray(prompt),
            output_tokens=be.asarray(output),
            all_greedy=all(p.temperature == 0.0 for p in ps),
            want_logprobs=any(p.logprobs for p in ps),
        )

    def _warmup(self, progress: bool) -> None:
        """Compile and warm the kernel variants serving will use (prefill sizes up to the
        largest step, decode), and capture the decode graphs and those prefill graphs, so that
        the first request is not slow. Prefill is warmed at 1, 7 and 64 tokens, then at every
        doubling from 512 up to the largest step (max_num_batched_tokens): attention's tuning
        bucket counts query tokens in powers of two, so a longer step may take another tile, and
        whether its tiles split their keys depends on how many there are; compiling those
        variants in a serving step would stall it for seconds. Running the largest step here
        also shows at load, not mid-serving, whether its activations fit beside the KV cache.
        The kernels are compiled first, all at once on many threads (`_compile_ahead`).
        Not warmed: steps of several prompts past the ladder's sizes (their graphs are captured
        on first use, a few eager steps' time once the kernels are compiled), and with
        prefill graphs off, eager chunks after a long context (sm90 Gemma 3 heads take another
        attention tile there: the bucket's kv is the context)."""
        import sys

        # (no larger than the KV cache holds: a step needs blocks for every token)
        top = min(self.max_num_batched_tokens, self.max_model_len - 1, self.pool.capacity_tokens)
        ladder = [1, 7, 64, 512]
        while ladder[-1] * 2 < top:
            ladder.append(ladder[-1] * 2)
        sizes = sorted({max(1, min(s, top)) for s in ladder + [top]})
        graphs = getattr(self.backend, "cuda_graphs", False)
        prefill_graphs = graphs and getattr(self.backend, "prefill_graphs", False)
        # with prefill graphs the largest step is warmed by its graph's capture alone: eager
        # steps of that size would then be rare (past the graph limit), and their GEMM
        # variants (inside a graph: dequantize + cuBLAS) would only lengthen the load
        eager = [s for s in sizes if s <= 512 or not prefill_graphs]
        # the graphs a prompt of s - 1 tokens replays: padded to the rung s with the padding
        # sequence, (s, 2), as nearly every prompt is (one of exactly s tokens replays (s, 1),
        # captured on first use). Their kernels are not all those of (s, 1): the output head's
        # GEMV takes one sampled row there and two here. And (top, 1): each full-budget chunk
        # of a prompt longer than the budget
        prefill_sizes = [(s - 1, 1) for s in sizes if s > 2] + [(top, 1)]
        if graphs:
            from forge.runtime.graphs import DecodeGraphs, PrefillGraphs

            self.graphs = DecodeGraphs(self)
            if prefill_graphs:
                self.prefill_graphs = PrefillGraphs(self)
        warm_mark = getattr(self.backend, "warm_mark", None)
        mark = warm_mark(self._warm_parts(eager, prefill_sizes)) if warm_mark else None
        t = time.perf_counter()
        self._compile_ahead(eager, prefill_sizes, progress, mark)
        t = self._lap("compile_ahead", t)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(eager), desc="warming kernels", unit="shape", file=sys.stderr, leave=False)
        for s in eager:
            # the last row's logits only: [T, vocab] float32 of an 8192-token step of a
            # 262k vocabulary would be 8.6 GB
            self._forward_prompt([0] * s, all_logits=False)
            if bar:
                bar.update(1)
        if bar:
            bar.close()
        t = self._lap("warm_eager", t)
        if self.graphs is not None:
            self.graphs.capture(progress)
            t = self._lap("decode_graphs", t)
        if self.prefill_graphs is not None:
            self.prefill_graphs.warm(prefill_sizes, progress)
            self._lap("prefill_graphs", t)
        if mark is not None and not mark.exists():
            from forge.kernels.precompile import leave_mark

            leave_mark(mark, {"model": self.cfg.name, "compile_ahead": self.compile_ahead,
                              "at": time.time()})

    def _warm_parts(self, eager: list[int], prefill_sizes: list[tuple[int, int]]) -> tuple:
        """What picks the kernel variants a warm-up compiles, besides code and machine (those
        `precompile.marker` adds): the model's config, each weight's type, shape and layout and
        each other tensor's dtype and shape, and the engine's sizes."""
        import dataclasses

        def desc(x):
            if isinstance(x, QTensor):
                return (x.ggml_type, tuple(x.shape), x.layout)
            if hasattr(x, "dtype") and hasattr(x, "shape"):
                return (str(x.dtype), tuple(x.shape))
            if dataclasses.is_dataclass(x):    # RopeSpec (its factors: dtype and shape)
                return tuple(desc(getattr(x, f.name)) for f in dataclasses.fields(x))
            return None if x is None else repr(x)

        plan, cfg, nb = self.model.plan, self.cfg, self.pool.num_blocks
        weights = [desc(plan.embed), desc(plan.output), desc(plan.output_norm)]
        for lp in plan.layers:
            weights.append(tuple(desc(getattr(lp, f.name)) for f in dataclasses.fields(lp)))
        be = self.backend
        return (repr(self.cfg), tuple(weights), str(getattr(be, "act_dtype", None)),
                bool(getattr(be, "cuda_graphs", False)), bool(getattr(be, "prefill_graphs", False)),
                self.block_size, self.max_model_len, self.max_num_seqs, self.max_num_batched_tokens,
                # the cache's size varies with free memory; what of it can pick a variant: an
                # integer argument's divisibility by 16, 32-bit offsets or not
                nb % 16 == 0, nb * self.block_size * cfg.num_kv_heads
                * max(cfg.head_dim, cfg.v_head_dim) >= 2**31,
                tuple(eager), tuple(prefill_sizes), self.run_ahead)

    def _compile_ahead(self, eager: list[int], prefill_sizes: list[tuple[int, int]],
                       progress: bool, mark=None) -> None:
        """Compile every kernel variant the warm-up will launch, on many threads, before it
        runs (kernels/precompile.py): a dry run of its steps whose launches only compile. The
        warm-up after it then finds them compiled; what this misses, or fails to compile, the
        warm-up compiles as before (and raises there). Skipped where the backend has no
        `compile_ahead` or it answers None (FORGE_COMPILE_THREADS 0 or 1, a Triton without
        it), and where `mark` (the backend's `warm_mark`) exists: an earlier warm-up of the same
        parts completed, so every kernel is in Triton's disk cache."""
        import sys

        make = getattr(self.backend, "compile_ahead", None)
        ahead = make(progress) if make is not None else None
        if ahead is None:
            return
        if mark is not None and mark.exists():
            self.compile_ahead = {"skipped": "an earlier load with this model, these sizes and "
                                             "this code compiled every kernel (Triton's cache)"}
            return
        t0 = time.perf_counter()
        try:
            with ahead as job:
                for s in eager:
                    self._forward_prompt([0] * s, all_logits=False)
                if self.graphs is not None:
                    self.graphs.dry_run()
                if self.prefill_graphs is not None:
                    self.prefill_graphs.dry_run(prefill_sizes)
        except Exception as e:  # noqa: BLE001 - the warm-up compiles what this did not
            print(f"forge: compiling ahead stopped ({type(e).__name__}: {e}); the warm-up "
                  "compiles the rest as it goes", file=sys.stderr)
            return
        self.compile_ahead = {"threads": job.workers, "kernels": job.submitted,
                              "failed": job.failed, "seconds": round(time.perf_counter() - t0, 3),
                              "waited_s": round(job.wait_s, 3)}

    # ---- tools --------------------------------------------------------------------------
    def model_logits(self, token_ids: Sequence[int], trace=None) -> np.ndarray:
        """Logits [T, vocab] (float32, NumPy) of every position of one prompt, through the same
        paged path as serving, without touching the scheduler's state."""
        logits = self._forward_prompt(token_ids, all_logits=True, trace=trace)
        return np.asarray(self.backend.to_numpy(logits), dtype=np.float32)

    def _forward_prompt(self, token_ids: Sequence[int], all_logits: bool, trace=None):
        """One prompt's forward pass through the paged path in blocks of its own (freed after),
        outside the scheduler; the backend's logits of every row (all_logits) or the last."""
        ids = [int(t) for t in token_ids]
        T = len(ids)
        bs = self.block_size
        nblk = -(-T // bs)
        blocks = self.pool.allocate(nblk)
        if blocks is None:
            raise RequestError(f"the KV cache has no room for {T} tokens right now")
        try:
            from forge.runtime.scheduler import ScheduledSeq, SchedulerOutput

            req = Request("__logits__", ids, SamplingParams(max_tokens=1))
            req.block_ids = list(blocks)
            out = SchedulerOutput(seqs=[ScheduledSeq(req, 0, T, True)], num_tokens=T)
            batch = make_forward_batch(out, bs, self.backend)
            logits = self.model.forward(batch, self.kv.layers, all_logits=all_logits, trace=trace)
            self.backend.synchronize()   # the step done before its blocks go back
            return logits
        finally:
            self.pool.free(blocks)


class _Ahead:
    """A step launched ahead: its logits (on the device) and the (request, start) it assumed
    for each sequence, in batch order."""

    __slots__ = ("seqs", "logits")

    def __init__(self, seqs: list[tuple[Request, int]], logits: Any):
        self.seqs, self.logits = seqs, logits

    def matches(self, out) -> bool:
        if len(out.seqs) != len(self.seqs):
            return False
        return all(s.request is r and s.start == start and s.num_new_tokens == 1 and s.sample
                   for s, (r, start) in zip(out.seqs, self.seqs))


def _plain_greedy(p: SamplingParams) -> bool:
    """Greedy with nothing that needs the sampler: one argmax kernel, no parameter uploads."""
    return (p.temperature == 0.0 and not p.logprobs and p.repetition_penalty == 1.0
            and not p.presence_penalty and not p.frequency_penalty)


def _pad(rows: list[list[int]]) -> np.ndarray:
    width = max(1, max((len(r) for r in rows), default=1))
    out = np.full((len(rows), width), -1, np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _random_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") >> 1


def _find_stop(text: str, stops: list[str], start: int) -> int | None:
    best = None
    for s in stops:
        i = text.find(s, start)
        if i != -1 and (best is None or i < best):
            best = i
    return best
