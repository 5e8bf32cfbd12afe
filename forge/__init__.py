"""forge: GGUF LLM inference with Triton kernels on GPUs and NumPy on the CPU.

Public API: `LLM`, `SamplingParams`, `RequestOutput`.
"""
from __future__ import annotations

__all__ = ["LLM", "SamplingParams", "RequestOutput"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "LLM":
        from forge.llm import LLM

        return LLM
    if name == "SamplingParams":
        from forge.sampling import SamplingParams

        return SamplingParams
    if name == "RequestOutput":
        from forge.runtime.request import RequestOutput

        return RequestOutput
    raise AttributeError(f"module 'forge' has no attribute {name!r}")
