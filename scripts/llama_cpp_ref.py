#!/usr/bin/env python3
"""llama.cpp built once on this host, from the llama-cpp-python 0.3.36 sdist, for benchmarks beside ours.

    python scripts/llama_cpp.py [--targets llama-bench llama-server ...]   # builds (about 9 min on 2 cores)

The source comes from PyPI (`pip download --no-deps --no-binary :all:`), never from a hub; the build
lands in the cache (`$LLAMATORCH_CACHE` or ~/.cache/llamatorch) under `llama.cpp/`, keyed by the CPU
model and flags, with every SIMD extension the CPU has switched on (AMX excepted, see simd_options).
Benchmarks import `binary()` from here; it builds on first use.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "llama-cpp-python==0.3.36"
_SRC_PREFIX = "llama_cpp_python-0.3.36/vendor/llama.cpp/"
DEFAULT_TARGETS = ("llama-bench", "llama-batched-bench", "llama-perplexity", "llama-tokenize", "llama-server")


def cache_root() -> Path:
    base = os.environ.get("LLAMATORCH_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "llamatorch"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def cpu_flags(interesting: tuple[str, ...] = ("avx2", "avx512", "amx", "fma", "f16c")) -> list[str]:
    """The SIMD flags that decide which kernels either side runs."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(interesting))
    except OSError:
        pass
    return []


def source_dir() -> Path:
    """The llama.cpp tree from the sdist, unpacked once into the cache."""
    root = cache_root() / "llama.cpp" / "src-0.3.36"
    if (root / "CMakeLists.txt").is_file():
        return root
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
                        SDIST, "-d", tmp], check=True)
        sdist = next(Path(tmp).glob("*.tar.gz"))
        staged = root.with_name(root.name + ".partial")
        shutil.rmtree(staged, ignore_errors=True)
        with tarfile.open(sdist) as tar:
            for m in tar.getmembers():
                if m.name.startswith(_SRC_PREFIX) and (m.isfile() or m.isdir()):
                    m.name = m.name[len(_SRC_PREFIX):]
                    if m.name:
                        tar.extract(m, staged, filter="data")
        shutil.rmtree(root, ignore_errors=True)
        staged.rename(root)
    return root


def build_dir() -> Path:
    host = hashlib.sha1((cpu_model() + " ".join(cpu_flags())).encode()).hexdigest()[:10]
    return cache_root() / "llama.cpp" / f"build-{host}"


def binary(name: str, targets: tuple[str, ...] = DEFAULT_TARGETS) -> Path:
    """Path to a llama.cpp tool built for this host (building every target on first use)."""
    path = build_dir() / "bin" / name
    if not path.is_file():
        build(tuple(dict.fromkeys((name, *targets))))
    return path


# ggml option -> the /proc/cpuinfo flag that allows it
_GGML_SIMD = {"AVX": "avx", "AVX2": "avx2", "FMA": "fma", "F16C": "f16c", "BMI2": "bmi2", "AVX_VNNI": "avx_vnni",
              "AVX512": "avx512f", "AVX512_VBMI": "avx512vbmi", "AVX512_VNNI": "avx512_vnni",
              "AVX512_BF16": "avx512_bf16"}


def simd_options() -> list[str]:
    """Every SIMD extension this CPU has, AMX excepted: with -march=native, ggml 0.3.36's AMX
    kernels take over Q4 products and crash on Intel hosts of this machine kind (SIGSEGV in
    ggml_backend_amx_mul_mat during llama-bench)."""
    have = set(cpu_flags(("avx", "fma", "f16c", "bmi2")))
    opts = ["-DGGML_NATIVE=OFF"] + [f"-DGGML_{opt}={'ON' if flag in have else 'OFF'}" for opt, flag in _GGML_SIMD.items()]
    return opts + ["-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]


def build(targets: tuple[str, ...]) -> None:
    src, out = source_dir(), build_dir()
    print(f"building llama.cpp ({', '.join(targets)}) into {out} for {cpu_model()}; this takes minutes",
          file=sys.stderr)
    subprocess.run(["cmake", "-S", str(src), "-B", str(out), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                    *simd_options(), "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DBUILD_SHARED_LIBS=OFF",
                    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=ON"],  # examples: llama-speculative, llama-lookup
                   check=True, stdout=sys.stderr)
    subprocess.run(["cmake", "--build", str(out), "-j", str(os.cpu_count() or 2), "--target", *targets],
                   check=True, stdout=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS))
    args = ap.parse_args()
    build(tuple(args.targets))
    print(build_dir() / "bin")


if __name__ == "__main__":
    main()
