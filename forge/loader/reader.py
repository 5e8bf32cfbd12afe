"""Open a GGUF file (gguf.GGUFReader over mmap), validate it, and expose typed metadata.

Every problem with the file becomes a `ModelFileError` naming the file and the problem: not a
GGUF file, an unsupported version, a truncated file, a tensor whose data runs past the end, an
unknown tensor type.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from forge.errors import ModelFileError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)


@dataclass(slots=True)
class TensorInfo:
    name: str
    ggml_type: int          # gguf.GGMLQuantizationType value
    type_name: str
    shape: tuple[int, ...]  # logical, outermost first: (rows, cols) for a matrix
    n_bytes: int
    data: np.ndarray        # mmap view: uint8 [rows, bytes_per_row] for quantized types


class GGUFFile:
    """A validated GGUF file. `metadata` maps keys to Python values; `tensors` maps names."""

    def __init__(self, path: str | os.PathLike, *, load_tensors: bool = True):
        self.path = Path(path)
        _check_header(self.path)
        try:
            from gguf import GGUFReader

            self._reader = GGUFReader(str(self.path), "r")
        except ModelFileError:
            raise
        except ValueError as e:  # unknown tensor/value type, bad layout
            raise ModelFileError(self.path, f"invalid GGUF: {e}") from None
        except Exception as e:  # noqa: BLE001 - any parse failure is a bad file to the user
            raise ModelFileError(self.path, f"cannot parse GGUF ({type(e).__name__}: {e})") from None
        self.metadata: dict[str, Any] = {}
        for key, field in self._reader.fields.items():
            if key.startswith("GGUF."):
                continue
            try:
                self.metadata[key] = field.contents()
            except Exception as e:  # noqa: BLE001
                raise ModelFileError(self.path, f"unreadable metadata key {key!r}: {e}") from None
        self.version = int(self._reader.fields["GGUF.version"].contents())
        self.tensors: dict[str, TensorInfo] = {}
        self._validate_tensors()

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
    def _validate_tensors(self) -> None:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        size = self.path.stat().st_size
        for t in self._reader.tensors:
            try:
                qtype = GGMLQuantizationType(int(t.tensor_type))
            except ValueError:
                raise ModelFileError(self.path, f"tensor {t.name!r} has unknown type {int(t.tensor_type)}") from None
            block, type_size = GGML_QUANT_SIZES[qtype]
            ne = [int(x) for x in t.shape]  # ne0 first
            n_elem = int(np.prod(ne)) if ne else 1
            if ne and ne[0] % block:
                raise ModelFileError(
                    self.path, f"tensor {t.name!r}: row length {ne[0]} is not a multiple of the {qtype.name} block size {block}")
            n_bytes = n_elem // block * type_size
            end = int(t.data_offset) + n_bytes
            if end > size:
                raise ModelFileError(
                    self.path, f"truncated file: tensor {t.name!r} needs bytes up to {end} but the file has {size}")
            self.tensors[t.name] = TensorInfo(
                name=t.name, ggml_type=int(qtype), type_name=qtype.name,
                shape=tuple(reversed(ne)), n_bytes=n_bytes, data=t.data,
            )

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise ModelFileError(self.path, f"missing tensor {name!r}") from None

    def has(self, name: str) -> bool:
        return name in self.tensors

    @property
    def file_size(self) -> int:
        return self.path.stat().st_size


def _check_header(path: Path) -> None:
    if not path.exists():
        raise ModelFileError(path, "no such file")
    if path.is_dir():
        raise ModelFileError(path, "is a directory, not a GGUF file")
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 4 or head[:4] != GGUF_MAGIC:
        raise ModelFileError(path, "not a GGUF file (bad magic)")
    if len(head) < 24:
        raise ModelFileError(path, "truncated file: the GGUF header is incomplete")
    version = struct.unpack("<I", head[4:8])[0]
    if version not in SUPPORTED_VERSIONS:
        raise ModelFileError(path, f"unsupported GGUF version {version} (supported: 2, 3)")


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    return GGUFFile(path)
