"""LLM: load a model, then generate / stream / chat on top of the engine."""
from __future__ import annotations

import gc
import os
import sys
import weakref
from typing import Iterator, Sequence

from forge.runtime.engine import Engine
from forge.runtime.request import RequestOutput
from forge.sampling import SamplingParams


class LLM:
    """A loaded model.

    >>> llm = LLM("smollm2-135m", device="cpu")
    >>> out = llm.generate(["The capital of France is"], SamplingParams(temperature=0, max_tokens=8))
    >>> out[0].text
    """

    def __init__(self, model: str | os.PathLike = "smollm2-135m", device: str = "auto", *,
                 progress: bool | None = None, gc_freeze: bool | None = None, **engine_kwargs):
        """gc_freeze: after loading (and, on a GPU, compiling, warming and capturing), run
        `gc.collect(); gc.freeze()` so the model's long-lived objects leave the garbage
        collector's generations and a later generation-2 pass does not walk them in the middle
        of a step (tens of ms on a large heap). None (default) = on for a GPU backend. Deleting
        an LLM that froze unfreezes (`gc.unfreeze()`), so that its reference cycles can be
        collected; other LLMs alive then lose the freeze, not their correctness."""
        if progress is None:
            progress = sys.stderr.isatty()
        self.engine = Engine(model, device=device, progress=progress, **engine_kwargs)
        self.tokenizer = self.engine.tokenizer
        self.config = self.engine.cfg
        if gc_freeze is None:
            gc_freeze = self.engine.backend.name != "cpu"
        if gc_freeze:
            from forge.runtime.hiccups import freeze_gc

            freeze_gc()
            # The engine holds reference cycles (engine <-> decode graphs); frozen, they would
            # never be collected, keeping device memory after the LLM is dropped.
            weakref.finalize(self, gc.unfreeze)

    @property
    def device(self) -> str:
        return self.engine.backend.name

    def generate(self, prompts: str | Sequence[str] | Sequence[Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams] | None = None, *,
                 progress: bool = False) -> list[RequestOutput]:
        """Run every prompt to completion, batched; outputs come back in prompt order."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if params is None:
            params = SamplingParams()
        plist = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(plist)} SamplingParams")
        ids = [self.engine.add_request(p, sp) for p, sp in zip(prompts, plist)]
        done: dict[str, RequestOutput] = {}
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(ids), desc="generating", unit="req", file=sys.stderr)
        try:
            while len(done) < len(ids):
                for out in self.engine.step():
                    if out.finished:
                        done[out.request_id] = out
                        if bar:
                            bar.update(1)
        except BaseException:
            for rid in ids:
                if rid not in done:
                    self.engine.abort(rid)
            raise
        finally:
            if bar:
                bar.close()
        return [done[r] for r in ids]

    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None) -> Iterator[str]:
        """Yield text pieces as they are generated (never splitting a UTF-8 character)."""
        rid = self.engine.add_request(prompt, params or SamplingParams())
        finished = False
        try:
            while not finished:
                for out in self.engine.step():
                    if out.request_id != rid:
                        continue
                    if out.delta:
                        yield out.delta
                    finished = out.finished
        finally:
            if not finished:
                self.engine.abort(rid)

    def chat(self, messages: list[dict], params: SamplingParams | None = None, *,
             stream: bool = False):
        """Render the model's chat template and generate the assistant's reply.

        Returns a RequestOutput, or an iterator of text pieces with stream=True."""
        ids = self.tokenizer.encode_chat(messages)
        if stream:
            return self.stream(ids, params)
        return self.generate([ids], params)[0]
