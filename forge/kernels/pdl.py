"""Programmatic Dependent Launch (PDL) for the small kernels of the decode path and the norms,
rope, activations and dequantize around prefill GEMMs (NVIDIA Hopper and later).

A kernel launched with `launch_pdl=True` (`**launch_kwargs()`) may be scheduled while the kernel
before it on the stream is still finishing (its last programs running, its stores not yet
flushed), which hides most of the launch gap between the short kernels of a captured decode
graph. The ordering is then the kernel's own job, through two PTX instructions (`griddepcontrol`,
Triton's `tl.extra.cuda.gdc_wait` / `gdc_launch_dependents`), wrapped here as `pdl_wait(PDL)` and
`pdl_launch(PDL)` so that with PDL=False (the interpreter, AMD, pre-Hopper, FORGE_PDL=0) they are
never traced and the kernel compiles exactly as without them.

Rules for a kernel launched with launch_pdl=True:

1. Every program MUST execute `pdl_wait(PDL)` unconditionally, before it reads anything an
   earlier kernel wrote or writes anything an earlier kernel reads, and before any early return.
   The wait blocks until the previous grid has completed and its memory is visible. A program
   that skips it (or returns first) races with its predecessor, and, worse, lets its own grid
   complete before the predecessor has, so the next kernel's wait no longer covers that
   predecessor: the ordering is transitive only through kernels that wait.
2. Work that touches only constant data (weights, tables fixed before the graph was captured) may
   come before the wait. Keep it simple: the kernels here wait first.
3. `pdl_launch(PDL)` (launch_dependents) may be called anywhere, typically first: it only lets
   the next kernel be scheduled once every program of this grid has called it or exited; that
   kernel still waits for this grid's completion and memory flush in its own `pdl_wait`.
4. Kernels launched without the attribute (torch ops, copies, other Triton kernels) wait for
   their predecessor as usual, and a PDL kernel after them waits in `pdl_wait`: mixing PDL and
   non-PDL launches on a stream, inside or outside a CUDA graph, is safe.

Launchers pass `**launch_args()` (the PDL constexpr and the launch option together).

Which launches take it (`FORGE_PDL`, read once per process):
- unset or `1` (the default): every launch of these kernels, eager or captured, decode or
  prefill. Triton compiles `launch_pdl` into the kernel's options, so a kernel launched both
  with and without it is compiled twice; launching it one way everywhere compiles it once (a
  first start of a Gemma 3 1B-shaped model compiled 171 variants, 87 with this and the other
  changes of run 26);
- `decode`: only while a CUDA graph is captured outside `suspended()` (the decode graphs; the
  prefill graphs suspend it): the policy before it was measured everywhere, kept to compare;
- `0` (or `off`, `false`, `no`): never.

`enabled()` decides once per process (`reset()` forgets it, for tests): True only without
TRITON_INTERPRET, on an NVIDIA GPU (torch.version.hip is None) of compute capability >= 9.0,
with a Triton that has gdc_wait / gdc_launch_dependents, and unless FORGE_PDL=0.
"""
from __future__ import annotations

import contextlib
import os

import triton
import triton.language as tl

from forge.kernels import env, precompile

try:  # triton/language/extra/cuda/gdc.py (Triton >= 3.3)
    from triton.language.extra import cuda as _tl_cuda
except ImportError:  # pragma: no cover - a Triton without the CUDA extras
    _tl_cuda = None

_MODE: str | None = None   # "off", "all" or "decode"; None: not decided yet
_SUSPENDED = 0   # > 0 inside `suspended()`


_OFF = ("0", "off", "false", "no")


def has_gdc() -> bool:
    """Whether this Triton exposes griddepcontrol (tl.extra.cuda.gdc_wait and friends)."""
    return (_tl_cuda is not None and hasattr(_tl_cuda, "gdc_wait")
            and hasattr(_tl_cuda, "gdc_launch_dependents"))


def _supported() -> bool:
    if env.interpreting():
        return False
    if not has_gdc():
        return False
    try:
        import torch

        if not torch.cuda.is_available() or torch.version.hip is not None:
            return False
        major, _ = torch.cuda.get_device_capability()
    except Exception:  # noqa: BLE001 - no usable CUDA: no PDL
        return False
    return major >= 9


def _detect() -> str:
    env = os.environ.get("FORGE_PDL", "").strip().lower()
    if env in _OFF or not _supported():
        return "off"
    return "decode" if env == "decode" else "all"


def mode() -> str:
    """"off", "all" (every launch; the default) or "decode" (graph captures outside
    `suspended()` only): see the module notes. Decided once per process (`reset()`)."""
    global _MODE
    if _MODE is None:
        _MODE = _detect()
    return _MODE


def enabled() -> bool:
    """Whether PDL is available here and not turned off (mode() != "off"); which launches take
    it is `mode()` / `active()`'s answer."""
    return mode() != "off"


def reset() -> None:
    """Forget the cached `mode()` answer (tests that change FORGE_PDL or the environment)."""
    global _MODE
    _MODE = None


def active() -> bool:
    """Whether a launch now takes PDL: enabled(), not `suspended()`, and in mode "all" always,
    in mode "decode" only while the current stream is being captured into a CUDA graph (or
    inside `precompile.as_if_captured()`, which compiles a capture's variants ahead).

    Measured (H100): the decode graphs gain from it (8B Q4_K_M tg128 290.9 -> 315.2). Mode
    "all" against "decode", Q4_K_M, forge bench per process (run 26):
    - prefill graphs, pp512: Llama-3.2-1B 123.8k-134.4k tok/s against 121.0k-124.9k (4 each),
      8B 26.7k / 26.8k against 26.3k / 26.5k;
    - tg128: 1B 1,453-1,465 against 1,451-1,472; 8B 410.5 / 410.5 against 411.1 / 413.3
      (mode "all" ran first in each of these two pairs; in the 1B pairs run the other way it
      was level or ahead);
    - eager pp512 (--no-prefill-graphs, host-bound): 1B 13.2k-22.0k against 17.3k-25.3k, 8B
      11.6k / 8.5k against 10.2k / 7.6k: each spread wider than any gap."""
    m = mode()
    if m == "off" or _SUSPENDED:
        return False
    return m == "all" or precompile.capturing()


@contextlib.contextmanager
def suspended():
    """Launches inside take no PDL (the prefill graphs' captures in mode "decode",
    runtime/graphs.py)."""
    global _SUSPENDED
    _SUSPENDED += 1
    try:
        yield
    finally:
        _SUSPENDED -= 1


def launch_args(allow: bool = True) -> dict:
    """Keyword arguments for one launch of a kernel with a `PDL` constexpr, from one active()
    query: {"PDL": True, "launch_pdl": True} when `allow` (e.g. a table's "PDL" key) and
    active(), else {"PDL": False}. The flag and the launch option always agree."""
    return {"PDL": True, "launch_pdl": True} if allow and active() else {"PDL": False}


def launch_kwargs() -> dict:
    """The launch option alone: {"launch_pdl": True} when active(), else {}."""
    return {k: v for k, v in launch_args().items() if k != "PDL"}


def with_pdl(spec: dict) -> dict:
    """A COMPILE_SPECS entry with PDL on (griddepcontrol), as it launches on Hopper: for NVIDIA
    targets only (AMD has no griddepcontrol; `enabled()` is False there). autotune.report and
    test_amd_compile then check the variant Hopper runs (registers, spills), not only the one
    without PDL."""
    return {**spec, "name": spec["name"] + "_pdl", "constexprs": {**spec["constexprs"], "PDL": True},
            "vendors": ["nvidia"]}


@triton.jit
def pdl_wait(PDL: tl.constexpr):
    """griddepcontrol.wait when PDL: block until the previous grid has completed and its memory
    operations are visible. Must run in every program before any dependent access."""
    if PDL:
        tl.extra.cuda.gdc_wait()


@triton.jit
def pdl_launch(PDL: tl.constexpr):
    """griddepcontrol.launch_dependents when PDL: allow the next kernel to be scheduled once every
    program of this grid has got here (or exited). Safe anywhere; it orders no memory."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
