"""Launch configs as data: (kernel, shape bucket, GPU arch) -> a config dict.

Launchers ask `get_config(kernel, bucket(**dims), default)` and pass the result to the kernel
launch (BLOCK_* constexprs, num_warps, num_stages and, on AMD only, waves_per_eu /
matrix_instr_nonkdim / kpack). Nothing is autotuned at run time: the tables come from
`autotune/` sweeps (user tables) or are shipped in `configs/` (see configs/README.md).

Lookup order (the first table that has an entry for the kernel wins, unless none of its entries
can serve the bucket: another value of an exact dim, below, and no "*"):

1. the user table: $FORGE_TUNING_TABLE, else ~/.cache/forge/tuning/<arch>.json (ignored, with a
   warning, when it was made for another arch);
2. the shipped arch file `configs/<arch>.json`;
3. the family default: other shipped arch files of the same family (e.g. gfx1100.json serves
   gfx1101), then the `families[<family>]` section of configs/default.json;
4. the `vendors[<vendor>]` section of configs/default.json, then its top-level `kernels`;
5. the launcher's `default`.

With no GPU (arch "cpu", the Triton interpreter) no table applies: launchers keep their defaults.

Within one table an exact bucket wins, else the nearest bucket whose dims are all among the
asked ones (distance = sum of |log2| differences over the entry's dims: a dim an entry does not
name matches any value, so a table written before a launcher gained a dim still serves it; ties go
to the entry naming more dims, then the smaller bucket, then the smaller string), else the
kernel's "*" entry. A kernel's EXACT_DIMS (attention's head dim `d`) are categories, not sizes:
an entry naming another value of one never serves (it is no nearer for a head dim one step
away), so a table need not repeat its other dims' grid for every head dim. The entry is laid over `default`; its "source" note and keys that are neither in
`default` nor launch options are dropped, and AMD-only keys are dropped off AMD.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
AMD_ONLY_KEYS = frozenset({"waves_per_eu", "matrix_instr_nonkdim", "kpack"})
# Keys that are Triton launch options rather than kernel constexprs: always allowed through.
LAUNCH_KEYS = frozenset({"num_warps", "num_stages", "num_ctas"})
NOTE_KEYS = frozenset({"source", "comment"})
# Constexpr keys that select a code path: the values the kernels define (matmul.py's GEMV:
# PREFETCH 0 off, 1 prefetch + fence, 2 prefetch left to ptxas, 4 / 3 the same two steps per
# loop iteration (no register copy of the prefetched words); X_PRE 0 x converted in the
# GEMV, 1 x quantized to int8 once before it; PDL 1 launched with programmatic dependent launch
# where kernels/pdl.py enables it, 0 never; FUSE_NORM 1 an rms_norm before the GEMV runs in its
# prologue where it can, 0 stays a kernel of its own).
# ASYNC (kernels/gemv_async.py, the shared-memory Q4_K / Q8_0 GEMV): 0 off, else its ring's slots;
# ASYNC_BN / ASYNC_WARPS / ASYNC_XA its rows and warps per program and whether x is staged too.
ENUM_KEYS = {"PREFETCH": (0, 1, 2, 3, 4), "X_PRE": (0, 1), "PDL": (0, 1), "FUSE_NORM": (0, 1),
             "ASYNC": (0, 2, 3, 4, 5, 6, 7, 8), "ASYNC_BN": (1, 2, 4, 8), "ASYNC_WARPS": (1, 2, 4, 8),
             "ASYNC_XA": (0, 1)}
# L2PF (matmul.py's GEMV, NVIDIA): how many steps ahead the weights are prefetched into L2 (0 off).
L2PF_VALUES = range(0, 4097)

# Bucket dims matched exactly, per kernel (dotted per-type names use their base kernel's): a
# head dim is a category (a tile tuned for d256 says nothing about d128 shapes: its shared
# memory, registers and MMA shapes differ), where token counts and widths are sizes.
EXACT_DIMS = {"attn_prefill": ("d",), "attn_prefill_f32": ("d",), "attn_decode": ("d",),
              "attn_decode_f32": ("d",), "attn_reduce": ("d",)}

_DIM_NAME = re.compile(r"[A-Za-z][A-Za-z_]*\Z")
_BUCKET_PART = re.compile(r"(?:^|_)([A-Za-z][A-Za-z_]*?)(\d+)(?=_|$)")


# ----------------------------------------------------------------------------------------------
# buckets


def _pow2_ceil(v: int) -> int:
    return 1 if v <= 1 else 1 << (int(v) - 1).bit_length()


def bucket(**dims: int) -> str:
    """Power-of-two shape bucket, keys sorted: bucket(N=16000, K=4096) -> "K4096_N16384".

    Each dim must be a non-negative int (0 and 1 both round to 1); names are letters and '_'.
    """
    if not dims:
        raise ValueError("dims: bucket() needs at least one dimension")
    parts = []
    for name in sorted(dims):
        v = dims[name]
        if not _DIM_NAME.match(name) or name.endswith("_"):
            raise ValueError(f"dims: bad dimension name {name!r} (letters and inner '_' only)")
        if isinstance(v, bool) or not isinstance(v, (int,)) and not hasattr(v, "__index__"):
            raise ValueError(f"{name}: expected an int, got {type(v).__name__}")
        v = int(v)
        if v < 0:
            raise ValueError(f"{name}: must be >= 0, got {v}")
        parts.append(f"{name}{_pow2_ceil(v)}")
    return "_".join(parts)


def parse_bucket(b: str) -> dict[str, int]:
    """Inverse of `bucket` for canonical strings: "K4096_N16384" -> {"K": 4096, "N": 16384}."""
    out: dict[str, int] = {}
    pos = 0
    for m in _BUCKET_PART.finditer(b):
        if m.start() != pos:
            break
        out[m.group(1)] = int(m.group(2))
        pos = m.end()
    if not out or pos != len(b):
        raise ValueError(f"bucket: cannot parse {b!r} (expected e.g. 'K4096_N16384')")
    return out


def exact_dims(kernel: str) -> tuple[str, ...]:
    """The dims `kernel`'s lookup matches exactly (EXACT_DIMS; "attn_prefill.x" -> attn_prefill's)."""
    return EXACT_DIMS.get(kernel.split(".", 1)[0], ())


def match_distance(want: Mapping[str, int], entry: Mapping[str, int],
                   exact: tuple[str, ...] = ()) -> float:
    """How far a table entry's bucket is from the asked one: the sum of |log2| differences over
    the dims the entry names (one it leaves out matches any value); inf when the entry names a
    dim that was not asked for, or another value of an `exact` dim."""
    if not entry.keys() <= want.keys():
        return math.inf
    if any(k in entry and entry[k] != want[k] for k in exact):
        return math.inf
    return sum(abs(math.log2(max(want[k], 1)) - math.log2(max(entry[k], 1))) for k in entry)


# ----------------------------------------------------------------------------------------------
# tables


@dataclass(frozen=True, slots=True)
class Table:
    path: str
    arch: str | None
    family: str | None
    source: str
    kernels: dict  # kernel -> {bucket or "*": entry}


def _validate_entry(where: str, entry: Any) -> dict:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: entry must be an object, got {type(entry).__name__}")
    for k, v in entry.items():
        if k in NOTE_KEYS:
            if not isinstance(v, str):
                raise ValueError(f"{where}.{k}: must be a string")
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise ValueError(f"{where}.{k}: must be a number or string, got {v!r}")
        if k in ("num_warps", "num_ctas") and (not isinstance(v, int) or v < 1 or v & (v - 1)):
            raise ValueError(f"{where}.{k}: must be a power of two >= 1, got {v!r}")
        if k == "num_stages" and (not isinstance(v, int) or v < 0):
            raise ValueError(f"{where}.num_stages: must be an int >= 0, got {v!r}")
        if k.startswith("BLOCK") and (not isinstance(v, int) or v < 1 or v & (v - 1)):
            raise ValueError(f"{where}.{k}: block sizes must be powers of two, got {v!r}")
        if k in ENUM_KEYS and (not isinstance(v, int) or v not in ENUM_KEYS[k]):
            raise ValueError(f"{where}.{k}: must be one of {ENUM_KEYS[k]}, got {v!r}")
        if k == "L2PF" and (not isinstance(v, int) or v not in L2PF_VALUES):
            raise ValueError(f"{where}.L2PF: must be an int in 0 .. {L2PF_VALUES[-1]} (steps), "
                             f"got {v!r}")
    return entry


def _parse_kernels(where: str, kernels: Any) -> dict:
    if not isinstance(kernels, dict):
        raise ValueError(f"{where}: 'kernels' must be an object")
    out: dict[str, dict] = {}
    for kname, entries in kernels.items():
        if not isinstance(entries, dict):
            raise ValueError(f"{where}.{kname}: must map buckets to configs")
        canon: dict[str, dict] = {}
        for b, entry in entries.items():
            if b != "*":
                b = bucket(**parse_bucket(b))  # canonical: sorted and rounded
            canon[b] = _validate_entry(f"{where}.{kname}[{b}]", entry)
        dimsets = sorted({"_".join(parse_bucket(b)) for b in canon if b != "*"})
        if len(dimsets) > 1:
            _warn_once(f"{where}.{kname}: entries name different dims ({', '.join(dimsets)}); "
                       "an entry that leaves a dim out is as near at any value of it, so it can "
                       "take shapes from entries that name the dim (autotune.sweep widens such "
                       "entries)")
        out[kname] = canon
    return out


def parse_table(doc: Any, path: str = "<table>") -> Table:
    """Validate a tuning-table JSON document (see configs/README.md for the schema)."""
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: a tuning table is a JSON object")
    kernels = _parse_kernels(path, doc.get("kernels", {}))
    for sect in ("families", "vendors"):
        sub = doc.get(sect, {})
        if not isinstance(sub, dict):
            raise ValueError(f"{path}: '{sect}' must be an object")
        for name, body in sub.items():
            if not isinstance(body, dict):
                raise ValueError(f"{path}.{sect}.{name}: must be an object")
            _parse_kernels(f"{path}.{sect}.{name}", body.get("kernels", {}))
    return Table(path, doc.get("arch"), doc.get("family"), str(doc.get("source", "")), kernels)


_lock = threading.Lock()
_table_cache: dict[tuple[str, float], tuple[Table, dict] | None] = {}
_resolve_cache: dict[tuple, "Resolved"] = {}
_warned: set[str] = set()
_overrides: list[Table] = []  # in-memory tables above everything else (autotune.sweep)


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)


def _load(path: Path, *, user: bool) -> tuple[Table, dict] | None:
    """(Table, raw document) for a JSON file, cached by mtime; None when absent or (user) invalid."""
    try:
        mtime = path.stat().st_mtime
    except OSError:
        if user and os.environ.get("FORGE_TUNING_TABLE"):
            _warn_once(f"FORGE_TUNING_TABLE={path} does not exist; using the shipped tables")
        return None
    key = (str(path), mtime)
    if key in _table_cache:
        return _table_cache[key]
    try:
        doc = json.loads(path.read_text())
        res = (parse_table(doc, str(path)), doc)
    except (OSError, ValueError) as e:
        if not user:
            raise
        _warn_once(f"ignoring tuning table {path}: {e}")
        res = None
    _table_cache[key] = res
    return res


def _section(doc: dict, sect: str, name: str, path: str) -> Table | None:
    body = doc.get(sect, {}).get(name)
    if body is None:
        return None
    return Table(f"{path}#{sect}.{name}", None, None, str(body.get("source", "")),
                 _parse_kernels(path, body.get("kernels", {})))


def user_table_path(arch: str) -> Path:
    env = os.environ.get("FORGE_TUNING_TABLE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "forge" / "tuning" / f"{arch}.json"


def _chain(arch: str, include_user: bool = True,
           include_overrides: bool = True) -> list[tuple[str, Table]]:
    """The tables to consult for `arch`, most specific first, as (level, table)."""
    from forge.runtime import device

    family = device.family_of(arch)
    vendor = device.vendor_of(arch)
    chain: list[tuple[str, Table]] = \
        [("override", t) for t in reversed(_overrides)] if include_overrides else []
    up = _load(user_table_path(arch), user=True) if include_user else None
    if up is not None:
        t = up[0]
        if t.arch is not None and t.arch != arch:
            _warn_once(f"tuning table {t.path} is for arch {t.arch!r}, not {arch!r}; ignoring it")
        else:
            chain.append(("user", t))
    shipped = _load(CONFIG_DIR / f"{arch}.json", user=False)
    if shipped is not None:
        chain.append(("arch", shipped[0]))
    if family:
        for p in sorted(CONFIG_DIR.glob("*.json")):
            if p.stem in (arch, "default"):
                continue
            other = _load(p, user=False)
            if other is not None and other[0].family == family:
                chain.append(("family", other[0]))
    dflt = _load(CONFIG_DIR / "default.json", user=False)
    if dflt is not None:
        t, doc = dflt
        if family and (s := _section(doc, "families", family, t.path)) is not None:
            chain.append(("family", s))
        if vendor and (s := _section(doc, "vendors", vendor, t.path)) is not None:
            chain.append(("vendor", s))
        chain.append(("default", t))
    return chain


def _pick(entries: dict, b: str, exact: tuple[str, ...] = ()) -> tuple[str, dict] | None:
    """(bucket key, entry) of `entries` that serves bucket b (None: none does; the caller goes
    on to the next table). exact: dims matched exactly (`exact_dims` of the kernel)."""
    if b in entries:
        return b, entries[b]
    want = parse_bucket(b) if b != "*" else None
    if want is not None:
        best = None
        for key in entries:
            if key == "*":
                continue
            dims = parse_bucket(key)
            d = match_distance(want, dims, exact)
            if d == math.inf:
                continue
            rank = (d, -len(dims), sum(math.log2(v) for v in dims.values()), key)
            if best is None or rank < best:
                best = rank
        if best is not None:
            return best[-1], entries[best[-1]]
    if "*" in entries:
        return "*", entries["*"]
    return None


# ----------------------------------------------------------------------------------------------
# lookup


@dataclass(frozen=True, slots=True)
class Resolved:
    config: dict      # what to launch with
    level: str        # "override" | "user" | "arch" | "family" | "vendor" | "default" | "builtin"
    table: str        # path (or path#section) of the table, "" for the builtin default
    key: str          # the bucket that matched ("*" for the catch-all, "" for builtin)
    source: str       # the entry's "source" note


def _current_arch() -> str:
    from forge.runtime import device

    return device.current_arch()


LEVELS = ("override", "user", "arch", "family", "vendor", "default", "builtin")  # most specific first


def typed_wins(generic_level: str, typed_level: str) -> bool:
    """Whether a per-type entry ("linear_gemv.Q4_K", found at `typed_level`) is laid over the
    generic kernel's ("linear_gemv", at `generic_level`): unless it is the builtin default or
    the generic entry comes from a higher-ranked table (a user table or an override of
    "linear_gemv" beats a shipped "linear_gemv.Q4_K")."""
    return typed_level != "builtin" and (generic_level == "builtin"
                                         or LEVELS.index(generic_level) >= LEVELS.index(typed_level))


def _find(chain: list[tuple[str, Table]], kernel: str, bucket_: str):
    """(level, table, key, entry) of the first table in `chain` with an entry for `kernel` that
    can serve the bucket (one of the bucket's exact dims, or "*")."""
    for level, table in chain:
        entries = table.kernels.get(kernel)
        if entries:
            got = _pick(entries, bucket_, exact_dims(kernel))
            if got is not None:
                return (level, table, *got)
    return None


def lookup(kernel: str, bucket_: str, arch: str) -> tuple[str, str, str, dict] | None:
    """(level, table path, bucket key, entry) that lookup on `arch` lays over a launcher default
    for `kernel` at `bucket_`, overrides aside; None when no table has the kernel. The entry is
    the table's (notes included), not a copy: do not modify it."""
    from forge.runtime import device

    if not device.vendor_of(arch):
        return None
    with _lock:
        found = _find(_chain(arch, include_overrides=False), kernel, bucket_)
    if found is None:
        return None
    level, table, key, entry = found
    return level, table.path, key, entry


def serving_table(kernel: str, arch: str, bucket_: str | None = None
                  ) -> tuple[str, str, str, dict] | None:
    """(level, table path, table source, {bucket: entry}) of the table that serves `kernel` on
    `arch` (the first in the lookup order that has it, overrides aside; with `bucket_`, the first
    with an entry that can serve that bucket: see EXACT_DIMS); None when none has it."""
    from forge.runtime import device

    if not device.vendor_of(arch):
        return None
    with _lock:
        for level, table in _chain(arch, include_overrides=False):
            entries = table.kernels.get(kernel)
            if entries and (bucket_ is None
                            or _pick(entries, bucket_, exact_dims(kernel)) is not None):
                return level, table.path, table.source, entries
    return None


def resolve(kernel: str, bucket_: str, default: Mapping[str, Any], arch: str | None = None) -> Resolved:
    """Like get_config, but also says which table and entry the config came from."""
    if not isinstance(kernel, str) or not kernel:
        raise ValueError("kernel: must be a non-empty string")
    if not isinstance(bucket_, str) or not bucket_:
        raise ValueError("bucket: must be a non-empty string")
    if bucket_ != "*":
        parse_bucket(bucket_)
    if not isinstance(default, Mapping):
        raise ValueError("default: must be a dict")
    arch = arch or _current_arch()
    env = os.environ.get("FORGE_TUNING_TABLE")
    try:
        dkey = tuple(sorted(default.items()))
        ckey = (kernel, bucket_, dkey, arch, env)
        hit = _resolve_cache.get(ckey)
        if hit is not None:
            return Resolved(dict(hit.config), hit.level, hit.table, hit.key, hit.source)
    except TypeError:  # unhashable default values: skip the cache
        ckey = None
    from forge.runtime import device

    is_amd = device.vendor_of(arch) == "amd"
    with _lock:
        # "cpu" (no GPU: the Triton interpreter) keeps the launchers' own defaults; overrides
        # (autotune.sweep) still apply.
        chain = _chain(arch) if device.vendor_of(arch) else [("override", t) for t in reversed(_overrides)]
        found = _find(chain, kernel, bucket_)
    cfg = dict(default)
    if found is None:
        res = Resolved(cfg, "builtin", "", "", "launcher default")
    else:
        level, table, key, entry = found
        for k, v in entry.items():
            if k in NOTE_KEYS:
                continue
            if k in AMD_ONLY_KEYS:
                if is_amd:
                    cfg[k] = v
                continue
            if k in default or k in LAUNCH_KEYS:
                cfg[k] = v
            else:
                _warn_once(f"{table.path}: {kernel}[{key}] has key {k!r} that the launcher does not "
                           f"use; dropped")
        res = Resolved(cfg, level, table.path, key, str(entry.get("source", table.source)))
    if not is_amd:
        for k in AMD_ONLY_KEYS & cfg.keys():
            del cfg[k]
    if ckey is not None:
        with _lock:
            _resolve_cache[ckey] = res
    return Resolved(dict(res.config), res.level, res.table, res.key, res.source)


def get_config(kernel: str, bucket: str, default: Mapping[str, Any], arch: str | None = None) -> dict:
    """The launch config for `kernel` at shape `bucket` (from `bucket(**dims)`) on `arch`.

    `default` is the launcher's own config: it names every key the kernel needs; the table entry
    is laid over it. `arch` defaults to the detected GPU ("cpu" when there is none).
    """
    return resolve(kernel, bucket, default, arch).config


def table_entries(kernel: str, arch: str, include_user: bool = True) -> list[tuple[str, str, str, dict]]:
    """Every entry for `kernel` in the tables that lookup on `arch` consults (a superset of what
    it can return), as (level, table path, bucket, entry). For the compile test and reports."""
    out = []
    for level, table in _chain(arch, include_user):
        for key, entry in (table.kernels.get(kernel) or {}).items():
            out.append((level, table.path, key, entry))
    return out


def clear_cache() -> None:
    """Forget loaded tables and resolved configs (tests; after writing a new user table), and
    the config caches of loaded kernel modules (their `clear_config_cache()`)."""
    import sys

    with _lock:
        _table_cache.clear()
        _resolve_cache.clear()
        _warned.clear()
    for name, mod in list(sys.modules.items()):
        if name.startswith("forge.kernels.") and mod is not None:
            fn = getattr(mod, "clear_config_cache", None)
            if callable(fn):
                fn()


@contextlib.contextmanager
def override(kernels: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> Iterator[None]:
    """Put an in-memory table {kernel: {bucket or "*": config}} above every other table while
    the block runs (autotune.sweep times candidates through the real launchers this way)."""
    t = Table("<override>", None, None, "override", _parse_kernels("<override>", dict(kernels)))
    with _lock:
        _overrides.append(t)
    clear_cache()
    try:
        yield
    finally:
        with _lock:
            _overrides.remove(t)
        clear_cache()
