"""LLM: load a model, then generate / stream / chat on top of the engine."""
from __future__ import annotations

import os
import sys
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
                 progress: bool | None = None, **engine_kwargs):
        if progress is None:
            progress = sys.stderr.isatty()
        self.engine = Engine(model, device=device, progress=progress, **engine_kwargs)
        self.tokenizer = self.engine.tokenizer
        self.config = self.engine.cfg

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
