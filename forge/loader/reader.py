"""Open a GGUF file (v2/v3), validate it, and expose its metadata and tensors.

The header, the metadata key/values and the tensor infos are parsed here with `struct` over a
read-only `np.memmap` of the file (gguf-py's `GGUFReader` builds NumPy views per array element,
which takes ~13 s for a 262k-token vocabulary; this takes a fraction of a second). Tensor data is
never read: each tensor's `data` is a zero-copy view of the mapping, shaped like gguf-py's
`ReaderTensor.data`:

- F32 / F16 / F64 / I8 / I16 / I32 / I64: typed arrays of the logical shape (outermost first);
- every other type (quantized, and BF16, as gguf-py does): uint8 `[..., bytes_per_row]`.

The `gguf` package is still the source of truth for the type tables (`GGMLQuantizationType`,
`GGML_QUANT_SIZES`, `GGUFValueType`) and for dequantization.

Every problem with the file becomes a one-line `ModelFileError(path, problem)`: no such file, a
directory, bad magic, an unsupported version, a truncated header / metadata / tensor info (naming
the key or tensor being read), an invalid value type, counts larger than the file could hold,
duplicate keys or tensor names, bad tensor dimensions, an unknown tensor type, a row length that is
not a multiple of the type's block size, a misaligned data offset, data past the end of the file,
and overlapping tensors.

Strings are UTF-8. Invalid UTF-8 in a key or tensor name is an error; in a string value it is
decoded with U+FFFD replacements (llama.cpp loads such files; some vocabularies hold raw bytes).
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from forge.errors import ModelFileError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_ARRAY_NESTING = 16               # arrays of arrays deeper than this are refused (recursion bound)

__all__ = ["GGUFFile", "TensorInfo", "open_gguf", "GGUF_MAGIC", "SUPPORTED_VERSIONS", "DEFAULT_ALIGNMENT"]


@dataclass(slots=True)
class TensorInfo:
    name: str
    ggml_type: int          # gguf.GGMLQuantizationType value
    type_name: str
    shape: tuple[int, ...]  # logical, outermost first: (rows, cols) for a matrix
    n_bytes: int
    data: np.ndarray        # mmap view: uint8 [rows, bytes_per_row] for quantized types
    offset: int = 0         # absolute file offset of the tensor's first byte


# Value types: scalar struct formats (little-endian) and the NumPy dtypes of numeric arrays.
_STRING = int(GGUFValueType.STRING)
_ARRAY = int(GGUFValueType.ARRAY)
_BOOL = int(GGUFValueType.BOOL)
_SCALAR_FMT: dict[int, struct.Struct] = {
    int(GGUFValueType.UINT8): struct.Struct("<B"),
    int(GGUFValueType.INT8): struct.Struct("<b"),
    int(GGUFValueType.UINT16): struct.Struct("<H"),
    int(GGUFValueType.INT16): struct.Struct("<h"),
    int(GGUFValueType.UINT32): struct.Struct("<I"),
    int(GGUFValueType.INT32): struct.Struct("<i"),
    int(GGUFValueType.FLOAT32): struct.Struct("<f"),
    int(GGUFValueType.BOOL): struct.Struct("<B"),
    int(GGUFValueType.UINT64): struct.Struct("<Q"),
    int(GGUFValueType.INT64): struct.Struct("<q"),
    int(GGUFValueType.FLOAT64): struct.Struct("<d"),
}
_ARRAY_DTYPE: dict[int, np.dtype] = {
    int(GGUFValueType.UINT8): np.dtype("<u1"),
    int(GGUFValueType.INT8): np.dtype("<i1"),
    int(GGUFValueType.UINT16): np.dtype("<u2"),
    int(GGUFValueType.INT16): np.dtype("<i2"),
    int(GGUFValueType.UINT32): np.dtype("<u4"),
    int(GGUFValueType.INT32): np.dtype("<i4"),
    int(GGUFValueType.FLOAT32): np.dtype("<f4"),
    int(GGUFValueType.BOOL): np.dtype("<u1"),
    int(GGUFValueType.UINT64): np.dtype("<u8"),
    int(GGUFValueType.INT64): np.dtype("<i8"),
    int(GGUFValueType.FLOAT64): np.dtype("<f8"),
}
_VALID_VALUE_TYPES = sorted(set(_SCALAR_FMT) | {_STRING, _ARRAY})


def _min_size(vt: int) -> int:
    """The fewest bytes one value of type `vt` occupies (for 'absurd count' checks)."""
    if vt == _STRING:
        return 8
    if vt == _ARRAY:
        return 12
    return _SCALAR_FMT[vt].size


# Typed tensor views, as gguf-py makes them; every other type is viewed as uint8 rows of blocks.
_TENSOR_DTYPE: dict[int, np.dtype] = {
    int(GGMLQuantizationType.F32): np.dtype("<f4"),
    int(GGMLQuantizationType.F16): np.dtype("<f2"),
    int(GGMLQuantizationType.F64): np.dtype("<f8"),
    int(GGMLQuantizationType.I8): np.dtype("<i1"),
    int(GGMLQuantizationType.I16): np.dtype("<i2"),
    int(GGMLQuantizationType.I32): np.dtype("<i4"),
    int(GGMLQuantizationType.I64): np.dtype("<i8"),
}

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<4sIQQ")     # magic, version, n_tensors, n_kv
_KV_MIN = 8 + 4 + 1                  # empty key + value type + the smallest value
_TI_MIN = 8 + 4 + 4 + 8              # empty name + n_dims + type + offset (no dims)


class _Parser:
    """Sequential reader of the header section; `where` names what is being read, for errors."""

    __slots__ = ("path", "buf", "size", "off", "where", "mm")

    def __init__(self, path: Path, mm: np.ndarray):
        self.path = path
        self.mm = mm
        self.buf = memoryview(mm)
        self.size = len(mm)
        self.off = 0
        self.where = "the GGUF header"

    def fail(self, problem: str) -> ModelFileError:
        return ModelFileError(self.path, problem)

    def truncated(self, end: int) -> ModelFileError:
        return self.fail(f"truncated file: {self.where} runs past the end of the file "
                         f"(needs bytes up to {end}, the file has {self.size})")

    def need(self, n: int) -> None:
        if self.off + n > self.size:
            raise self.truncated(self.off + n)

    def u32(self) -> int:
        self.need(4)
        (v,) = _U32.unpack_from(self.buf, self.off)
        self.off += 4
        return v

    def u64(self) -> int:
        self.need(8)
        (v,) = _U64.unpack_from(self.buf, self.off)
        self.off += 8
        return v

    def raw_str(self) -> memoryview:
        n = self.u64()
        self.need(n)
        s = self.buf[self.off:self.off + n]
        self.off += n
        return s

    def name(self, what: str) -> str:
        """A key or tensor name: strict UTF-8."""
        raw = self.raw_str()
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8: {bytes(raw[:64])!r}") from None

    # -- values ------------------------------------------------------------------------------
    def value(self, vt: int, key: str) -> Any:
        if vt == _STRING:
            return str(self.raw_str(), "utf-8", "replace")
        if vt == _ARRAY:
            return self.array(key, 1)
        fmt = _SCALAR_FMT.get(vt)
        if fmt is None:
            raise self.fail(f"metadata key {key!r} has invalid value type {vt} "
                            f"(valid: {', '.join(map(str, _VALID_VALUE_TYPES))})")
        self.need(fmt.size)
        (v,) = fmt.unpack_from(self.buf, self.off)
        self.off += fmt.size
        return v != 0 if vt == _BOOL else v

    def array(self, key: str, depth: int) -> list:
        if depth > MAX_ARRAY_NESTING:
            raise self.fail(f"metadata key {key!r}: arrays nested more than {MAX_ARRAY_NESTING} deep")
        at = self.u32()
        n = self.u64()
        if at not in _SCALAR_FMT and at not in (_STRING, _ARRAY):
            raise self.fail(f"metadata key {key!r} is an array of invalid value type {at} "
                            f"(valid: {', '.join(map(str, _VALID_VALUE_TYPES))})")
        left = self.size - self.off
        if n * _min_size(at) > left:
            raise self.fail(f"metadata key {key!r}: array length {n} is larger than the file could hold "
                            f"({left} bytes left at offset {self.off})")
        if at == _STRING:
            return self.str_array(n)
        if at == _ARRAY:
            return [self.array(key, depth + 1) for _ in range(n)]
        dt = _ARRAY_DTYPE[at]
        arr = np.frombuffer(self.mm, dtype=dt, count=n, offset=self.off)
        self.off += n * dt.itemsize
        if at == _BOOL:
            return (arr != 0).tolist()
        return arr.tolist()

    def str_array(self, n: int) -> list[str]:
        # The hot loop for vocabularies (262k strings): locals only, one bounds check per string.
        buf, size, unpack = self.buf, self.size, _U64.unpack_from
        off = self.off
        out: list[str] = []
        append = out.append
        for _ in range(n):
            if off + 8 > size:
                self.off = off
                raise self.truncated(off + 8)
            (ln,) = unpack(buf, off)
            off += 8
            end = off + ln
            if end > size:
                self.off = off
                raise self.truncated(end)
            append(str(buf[off:end], "utf-8", "replace"))
            off = end
        self.off = off
        return out


class GGUFFile:
    """A validated GGUF file. `metadata` maps keys to Python values; `tensors` maps names.

    Attributes: path, version, alignment (general.alignment, default 32), metadata (str for
    strings, int / float / bool scalars, lists for arrays, nested lists for arrays of arrays),
    tensors (name -> TensorInfo, in file order; empty with load_tensors=False), tensor_count (from
    the header, also with load_tensors=False), data_offset (start of the tensor data section;
    None with load_tensors=False).
    """

    def __init__(self, path: str | os.PathLike, *, load_tensors: bool = True):
        self.path = Path(path)
        if not self.path.exists():
            raise ModelFileError(self.path, "no such file")
        if self.path.is_dir():
            raise ModelFileError(self.path, "is a directory, not a GGUF file")
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as fh:
                head = fh.read(_HEADER.size)
        except OSError as e:
            raise ModelFileError(self.path, f"cannot read the file ({e.strerror or e})") from None
        if len(head) < 4 or head[:4] != GGUF_MAGIC:
            raise ModelFileError(self.path, "not a GGUF file (bad magic)")
        if len(head) >= 8:
            (version,) = _U32.unpack_from(head, 4)
            if version not in SUPPORTED_VERSIONS:
                if version & 0xFFFF == 0 and version >> 16:
                    raise ModelFileError(self.path, "big-endian GGUF files are not supported")
                raise ModelFileError(self.path, f"unsupported GGUF version {version} (supported: 2, 3)")
        if len(head) < _HEADER.size:
            raise ModelFileError(self.path, "truncated file: the GGUF header is incomplete "
                                            f"(needs {_HEADER.size} bytes, the file has {size})")
        try:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as e:
            raise ModelFileError(self.path, f"cannot map the file ({e})") from None
        self._size = len(self._map)
        p = _Parser(self.path, self._map)
        _, self.version, n_tensors, n_kv = _HEADER.unpack_from(p.buf, 0)
        p.off = _HEADER.size
        self.tensor_count: int = n_tensors
        if n_kv * _KV_MIN > self._size - p.off:
            raise p.fail(f"the header claims {n_kv} metadata keys, more than the file "
                         f"({self._size} bytes) could hold")
        if n_tensors * _TI_MIN > self._size - p.off:
            raise p.fail(f"the header claims {n_tensors} tensors, more than the file "
                         f"({self._size} bytes) could hold")
        self.metadata: dict[str, Any] = self._read_metadata(p, n_kv)
        self.alignment: int = self._read_alignment()
        self.tensors: dict[str, TensorInfo] = {}
        self.data_offset: int | None = None
        if load_tensors:
            self._read_tensors(p, n_tensors)

    # -- parsing -----------------------------------------------------------------------------
    def _read_metadata(self, p: _Parser, n_kv: int) -> dict[str, Any]:
        md: dict[str, Any] = {}
        prev = None
        for i in range(n_kv):
            p.where = f"the name of metadata key #{i}" + (f" (after {prev!r})" if prev else "")
            key = p.name(f"metadata key #{i}")
            if key in md:
                raise p.fail(f"duplicate metadata key {key!r}")
            p.where = f"metadata key {key!r}"
            vt = p.u32()
            md[key] = p.value(vt, key)
            prev = key
        return md

    def _read_alignment(self) -> int:
        if "general.alignment" not in self.metadata:
            return DEFAULT_ALIGNMENT
        # Written as uint32; any integer type holding a power of two is accepted.
        a = self.metadata["general.alignment"]
        if type(a) is not int or a <= 0 or a & (a - 1) or a >= 1 << 32:
            raise ModelFileError(self.path, f"metadata key 'general.alignment' must be a power of two, got {a!r}")
        return a

    def _read_tensors(self, p: _Parser, n_tensors: int) -> None:
        infos: list[tuple[str, int, tuple[int, ...], int]] = []   # name, type, ne (innermost first), offset
        seen: set[str] = set()
        prev = None
        for i in range(n_tensors):
            p.where = f"the name of tensor info #{i}" + (f" (after {prev!r})" if prev else "")
            name = p.name(f"the name of tensor #{i}")
            if name in seen:
                raise p.fail(f"duplicate tensor name {name!r}")
            seen.add(name)
            p.where = f"tensor info {name!r}"
            n_dims = p.u32()
            if not 1 <= n_dims <= MAX_DIMS:
                raise p.fail(f"tensor {name!r} has {n_dims} dimensions (expected 1 to {MAX_DIMS})")
            p.need(8 * n_dims)
            ne = struct.unpack_from(f"<{n_dims}Q", p.buf, p.off)
            p.off += 8 * n_dims
            if any(d <= 0 or d >= 1 << 63 for d in ne):
                raise p.fail(f"tensor {name!r} has an invalid dimension: {list(ne)} "
                             "(each must be positive)")
            ggml_type = p.u32()
            offset = p.u64()
            infos.append((name, ggml_type, ne, offset))
            prev = name
        align = self.alignment
        data_start = -(-p.off // align) * align
        self.data_offset = data_start
        size = self._size
        base = self._map.view(np.ndarray)
        spans: list[tuple[int, int, int, str]] = []   # start, file order, end, name
        for name, ggml_type, ne, offset in infos:
            try:
                qt = GGMLQuantizationType(ggml_type)
                block, type_size = GGML_QUANT_SIZES[qt]
            except (ValueError, KeyError):
                raise ModelFileError(self.path, f"tensor {name!r} has unknown type {ggml_type}") from None
            if ne[0] % block:
                raise ModelFileError(
                    self.path, f"tensor {name!r}: row length {ne[0]} is not a multiple of the "
                               f"{qt.name} block size {block}")
            if offset % align:
                raise ModelFileError(
                    self.path, f"tensor {name!r}: data offset {offset} is not a multiple of the "
                               f"alignment {align}")
            n_elem = 1
            for d in ne:
                n_elem *= d
            n_bytes = n_elem // block * type_size
            start = data_start + offset
            end = start + n_bytes
            if end > size:
                raise ModelFileError(
                    self.path, f"truncated file: tensor {name!r} needs bytes up to {end} but the file has {size}")
            shape = tuple(reversed(ne))
            dt = _TENSOR_DTYPE.get(ggml_type)
            if dt is not None:
                data = base[start:end].view(dt).reshape(shape)
            else:
                data = base[start:end].reshape(*shape[:-1], ne[0] // block * type_size)
            self.tensors[name] = TensorInfo(name=name, ggml_type=int(qt), type_name=qt.name, shape=shape,
                                            n_bytes=n_bytes, data=data, offset=start)
            spans.append((start, len(spans), end, name))
        spans.sort()
        for (s0, _, e0, n0), (s1, _, e1, n1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise ModelFileError(
                    self.path, f"tensors {n0!r} (bytes {s0}..{e0}) and {n1!r} (bytes {s1}..{e1}) overlap")

    # -- metadata --------------------------------------------------------------------------
    @property
    def arch(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise ModelFileError(self.path, "missing metadata key 'general.architecture'")
        return arch

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    # -- tensors ---------------------------------------------------------------------------
    def tensor(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise ModelFileError(self.path, f"missing tensor {name!r}") from None

    def has(self, name: str) -> bool:
        return name in self.tensors

    @property
    def file_size(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return (f"GGUFFile({str(self.path)!r}, v{self.version}, {len(self.metadata)} keys, "
                f"{len(self.tensors)}/{self.tensor_count} tensors)")


def open_gguf(path: str | os.PathLike, *, load_tensors: bool = True) -> GGUFFile:
    return GGUFFile(path, load_tensors=load_tensors)
