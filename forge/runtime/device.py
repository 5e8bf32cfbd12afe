"""The one place that asks the hardware anything: GPU arch, family, warp size, LDS, CUs, memory.

`detect()` reads torch's device properties once (cached) and checks every value for sanity; a
value that is missing or implausible is replaced by the family default, with a warning naming it,
so that nothing downstream launches with garbage. It returns None when torch is missing or sees
no GPU (the CPU/NumPy path).

$FORGE_ARCH (e.g. "gfx942") overrides the detected arch for testing launch-config lookup; values
that depend on the vendor then come from that arch's family defaults when the vendors differ.
The pure helpers `family_of`, `vendor_of` and `family_defaults` need no GPU.
"""
from __future__ import annotations

import functools
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any

KiB = 1024
WARP_SIZES = (32, 64)
LDS_RANGE = (16 * KiB, 256 * KiB)
CU_RANGE = (1, 1024)

_NV_ARCH = re.compile(r"sm(\d)(\d)a?\Z|sm(1\d)(\d)a?\Z")
_AMD_ARCH = re.compile(r"gfx([0-9]{2,4}[a-z]?)\Z")


@dataclass(frozen=True, slots=True)
class FamilyDefaults:
    warp_size: int
    lds_bytes: int  # shared memory one block (workgroup) may use
    num_cus: int


# Fallbacks when the hardware reports nonsense, and the basis for reasoned configs.
# NVIDIA lds_bytes is the opt-in per-block maximum Triton can use.
FAMILY_DEFAULTS: dict[str, FamilyDefaults] = {
    "volta": FamilyDefaults(32, 96 * KiB, 80),
    "turing": FamilyDefaults(32, 64 * KiB, 40),
    "ampere": FamilyDefaults(32, 163 * KiB, 108),    # sm80 (A100); sm86/87 have 99 KiB
    "ada": FamilyDefaults(32, 99 * KiB, 128),
    "hopper": FamilyDefaults(32, 227 * KiB, 132),
    "blackwell": FamilyDefaults(32, 227 * KiB, 148),  # sm120 consumer parts have 99 KiB
    "gcn5": FamilyDefaults(64, 64 * KiB, 60),
    "cdna1": FamilyDefaults(64, 64 * KiB, 120),
    "cdna2": FamilyDefaults(64, 64 * KiB, 110),
    "cdna3": FamilyDefaults(64, 64 * KiB, 304),
    "cdna4": FamilyDefaults(64, 160 * KiB, 256),
    "rdna1": FamilyDefaults(32, 64 * KiB, 40),
    "rdna2": FamilyDefaults(32, 64 * KiB, 80),
    "rdna3": FamilyDefaults(32, 64 * KiB, 96),
    "rdna4": FamilyDefaults(32, 64 * KiB, 64),
}
_GENERIC = {"nvidia": FamilyDefaults(32, 48 * KiB, 16), "amd": FamilyDefaults(64, 64 * KiB, 16)}
_NV_LDS = {"sm86": 99 * KiB, "sm87": 163 * KiB, "sm89": 99 * KiB, "sm120": 99 * KiB}


def vendor_of(arch: str) -> str | None:
    """"nvidia" for sm*, "amd" for gfx*, None for anything else (e.g. "cpu")."""
    if _NV_ARCH.match(arch or ""):
        return "nvidia"
    if _AMD_ARCH.match(arch or ""):
        return "amd"
    return None


def family_of(arch: str) -> str | None:
    """The arch family ("hopper", "cdna3", "rdna3", ...), None when unknown."""
    arch = arch or ""
    m = _NV_ARCH.match(arch)
    if m:
        cc = int("".join(g for g in m.groups() if g))
        if cc >= 100:
            return "blackwell"
        if cc >= 90:
            return "hopper"
        if cc == 89:
            return "ada"
        if cc >= 80:
            return "ampere"
        if cc == 75:
            return "turing"
        if cc >= 70:
            return "volta"
        return None
    m = _AMD_ARCH.match(arch)
    if not m:
        return None
    g = m.group(1)
    if g in ("940", "941", "942"):
        return "cdna3"
    if g == "950":
        return "cdna4"
    if g == "90a":
        return "cdna2"
    if g == "908":
        return "cdna1"
    if g in ("900", "902", "904", "906", "909", "90c"):
        return "gcn5"
    if len(g) == 4:
        major, minor = g[:2], g[2]
        if major == "10":
            return "rdna1" if minor == "1" else "rdna2" if minor == "3" else None
        if major == "11":
            return "rdna3"  # gfx110x and the RDNA 3.5 APUs gfx115x
        if major == "12":
            return "rdna4"
    return None


def vendor_of_family(family: str) -> str | None:
    """"amd" for gcn*/cdna*/rdna*, "nvidia" for the NVIDIA families, None otherwise."""
    if family.startswith(("gcn", "cdna", "rdna")):
        return "amd"
    if family in ("volta", "turing", "ampere", "ada", "hopper", "blackwell"):
        return "nvidia"
    return None


def family_defaults(arch: str) -> FamilyDefaults:
    fam = family_of(arch)
    d = FAMILY_DEFAULTS.get(fam) if fam else None
    if d is None:
        d = _GENERIC.get(vendor_of(arch) or "nvidia")
    if arch in _NV_LDS:
        d = FamilyDefaults(d.warp_size, _NV_LDS[arch], d.num_cus)
    return d


def is_known_arch(arch: str) -> bool:
    return vendor_of(arch) is not None


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    vendor: str        # "nvidia" | "amd"
    arch: str          # "sm90", "sm80", "gfx942", "gfx1100", ...
    family: str        # "hopper", "ampere", "ada", "cdna3", "rdna3", ... ("unknown" if new)
    warp_size: int     # 32 or 64
    lds_bytes: int     # shared memory (LDS) one block may use
    num_cus: int       # SMs / CUs
    total_memory: int  # bytes
    name: str

    @property
    def is_amd(self) -> bool:
        return self.vendor == "amd"


def _warn(msg: str) -> None:
    warnings.warn(f"forge.runtime.device: {msg}", RuntimeWarning, stacklevel=3)


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def from_props(props: Any, *, is_hip: bool, override: str | None = None) -> DeviceInfo:
    """Build a checked DeviceInfo from a torch device-properties object (or anything with the
    same attributes). Pure: used by `detect()` and by the tests with fake properties."""
    vendor = "amd" if is_hip else "nvidia"
    name = str(getattr(props, "name", "") or "unknown GPU")
    if is_hip:
        raw = str(getattr(props, "gcnArchName", "") or "")
        arch = raw.split(":", 1)[0].strip()
        if vendor_of(arch) != "amd":
            _warn(f"gcnArchName {raw!r} is not a gfx arch; assuming gfx942")
            arch = "gfx942"
    else:
        major, minor = _int(getattr(props, "major", None)), _int(getattr(props, "minor", None))
        arch = f"sm{major}{minor}" if major is not None and minor is not None else ""
        if vendor_of(arch) != "nvidia" or major is None or not (5 <= major <= 19) or not (0 <= minor <= 9):
            _warn(f"compute capability {major}.{minor} is implausible; assuming sm80")
            arch = "sm80"
    if override:
        if vendor_of(override) is None:
            _warn(f"FORGE_ARCH={override!r} is not a known arch pattern (sm90, gfx942, ...); ignored")
        else:
            if vendor_of(override) != vendor:
                props = None  # hardware numbers belong to another vendor: use family defaults
            arch, vendor = override, vendor_of(override)
    family = family_of(arch)
    if family is None:
        _warn(f"arch {arch!r} belongs to no known family; using generic {vendor} defaults")
    d = family_defaults(arch)

    raw = getattr(props, "warp_size", None) if props is not None else d.warp_size
    warp = _int(raw)
    if warp not in WARP_SIZES or (vendor == "nvidia" and warp != 32):
        if props is not None:
            _warn(f"warp_size {raw!r} is not valid for {arch}; using {d.warp_size}")
        warp = d.warp_size

    lds = None
    if props is not None:
        lds = _int(getattr(props, "shared_memory_per_block_optin", None))
        if lds is None or lds <= 0:
            lds = _int(getattr(props, "shared_memory_per_block", None))
            if vendor == "nvidia" and lds is not None and lds == 48 * KiB:
                lds = d.lds_bytes  # the static default; Triton opts in to the real maximum
    if lds is None or not (LDS_RANGE[0] <= lds <= LDS_RANGE[1]):
        if props is not None:
            _warn(f"shared memory per block {lds!r} outside [16 KiB, 256 KiB]; using {d.lds_bytes}")
        lds = d.lds_bytes

    raw = getattr(props, "multi_processor_count", None) if props is not None else d.num_cus
    cus = _int(raw)
    if cus is None or not (CU_RANGE[0] <= cus <= CU_RANGE[1]):
        if props is not None:
            _warn(f"multi_processor_count {raw!r} outside [1, 1024]; using {d.num_cus}")
        cus = d.num_cus

    raw = getattr(props, "total_memory", None) if props is not None else 0
    mem = _int(raw)
    if mem is None or mem < 0 or (props is not None and mem == 0):
        _warn(f"total_memory {raw!r} is not a positive byte count; using 0 (unknown)")
        mem = 0
    return DeviceInfo(vendor, arch, family or "unknown", warp, lds, cus, mem, name)


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


@functools.lru_cache(maxsize=1)
def detect() -> DeviceInfo | None:
    """The current GPU, checked; None when torch is missing or sees no GPU. Cached."""
    torch = _torch()
    if torch is None:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        idx = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
    except Exception as e:  # a broken driver is "no GPU", said out loud
        _warn(f"torch.cuda failed ({e!r}); treating as no GPU")
        return None
    is_hip = getattr(getattr(torch, "version", None), "hip", None) is not None
    return from_props(props, is_hip=is_hip, override=os.environ.get("FORGE_ARCH") or None)


def current_arch() -> str:
    """$FORGE_ARCH when set to a known arch, else the detected GPU's arch, else "cpu"."""
    env = os.environ.get("FORGE_ARCH")
    if env and vendor_of(env) is not None:
        return env
    info = detect()
    return info.arch if info is not None else "cpu"


def free_memory() -> tuple[int, int]:
    """(free, total) bytes on the current GPU, from torch.cuda.mem_get_info; (0, 0) with no GPU."""
    if detect() is None:
        return 0, 0
    torch = _torch()
    free, total = torch.cuda.mem_get_info()
    return int(free), int(total)
