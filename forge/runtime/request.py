"""Request state for the scheduler, and the public `RequestOutput`.

A `Request` knows no "prefill" or "decode": it has tokens (prompt + output so far) and a count
of how many of them have their K/V in the cache (`num_computed_tokens`). Whatever is left is
computed in later steps; a step that brings the count up to `num_tokens` samples a new token.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "finished_stopped"
    FINISHED_LENGTH = "finished_length"
    FINISHED_ABORTED = "finished_aborted"

    @property
    def is_finished(self) -> bool:
        return self in _FINISH_REASONS

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


@dataclass(slots=True, eq=False)
class Request:
    """One generation request as the scheduler sees it.

    `params` is a `forge.sampling.SamplingParams`; the scheduler reads `max_tokens` (None means
    "up to the context"), and `stop_token_ids` / `ignore_eos` when they are there.
    `arrival` is set by `Scheduler.add` (a counter: lower = older). `block_ids` are the KV blocks
    the request holds, in order; `block_hashes` the prefix hashes of its full blocks (computed
    lazily) and `num_cached_blocks` how many of its blocks are registered in the prefix cache.
    """

    request_id: str
    prompt_token_ids: list[int]
    params: Any
    prompt: str | None = None
    arrival: int = -1
    output_token_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    num_computed_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)
    num_cached_blocks: int = 0
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: str | None = None
    num_preemptions: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, str) or not self.request_id:
            raise ValueError(f"request_id must be a non-empty str, got {self.request_id!r}")
        try:
            self.prompt_token_ids = [int(t) for t in self.prompt_token_ids]
        except (TypeError, ValueError):
            raise ValueError("prompt_token_ids must be a sequence of ints") from None
        if any(t < 0 for t in self.prompt_token_ids):
            raise ValueError("prompt_token_ids must not contain negative ids")
        max_tokens = getattr(self.params, "max_tokens", None)
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise ValueError(f"params.max_tokens must be a positive int or None, "
                             f"got {max_tokens!r}")
        if not isinstance(self.status, RequestStatus):
            raise ValueError(f"status must be a RequestStatus, got {self.status!r}")

    # ---- token views ----------------------------------------------------------------------
    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens_to_compute(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def max_tokens(self) -> int | None:
        return getattr(self.params, "max_tokens", None)

    def token_slice(self, start: int, end: int) -> list[int]:
        """all_token_ids[start:end] without building the whole list."""
        p = len(self.prompt_token_ids)
        if start >= p:
            return self.output_token_ids[start - p:end - p]
        if end <= p:
            return self.prompt_token_ids[start:end]
        return self.prompt_token_ids[start:] + self.output_token_ids[:end - p]

    def finish(self, status: RequestStatus) -> None:
        if not status.is_finished:
            raise ValueError(f"finish() needs a FINISHED_* status, got {status}")
        self.status = status
        self.finish_reason = status.finish_reason


@dataclass(slots=True)
class RequestOutput:
    """What `LLM.generate` returns and `LLM.stream` yields for one prompt.

    `text` and `token_ids` are the generated continuation (not the prompt). `logprobs` holds the
    log-probability of each generated token when `SamplingParams.logprobs` asked for it, else
    None. `finish_reason` is "stop", "length", "abort", or None while the request still runs.
    `delta` is the text added since the previous output of this request (for streaming).
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[float] | None = None
    finished: bool = False
    delta: str = ""

    def __post_init__(self) -> None:
        if self.finish_reason not in (None, "stop", "length", "abort"):
            raise ValueError(f"finish_reason must be 'stop', 'length', 'abort' or None, "
                             f"got {self.finish_reason!r}")
        if self.finished != (self.finish_reason is not None):
            raise ValueError("finished must be True exactly when finish_reason is set")
        if self.logprobs is not None and len(self.logprobs) != len(self.token_ids):
            raise ValueError(f"logprobs has {len(self.logprobs)} entries for "
                             f"{len(self.token_ids)} token_ids")
