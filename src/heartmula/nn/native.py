"""Optional C++ kernels for decoding with float32 or bfloat16 weights on x86 CPUs with AVX2 + FMA (`decoding.cpp`):
the few-row products of `heartmula.nn.layers.linear`, a whole transformer step over a few new tokens
(`heartmula.nn.transformer`), the top-k sampler (`heartmula.nn.sampling`) and the local decoder's loop over a
frame's codebooks 1..K-1 (`heartmula.lm.generation`).

It is compiled once per machine with torch's extension builder (g++ and ninja, about a minute; `scripts/setup.sh`
does it ahead of time: `python3 -m heartmula.nn.native`) and cached in torch's extension folder
($TORCH_EXTENSIONS_DIR, else ~/.cache/torch_extensions). Where it cannot be used (another CPU, no compiler, a
failed build, or HEARTMULA_NATIVE=0) `kernels()` returns None and the callers keep torch's own products, with one
warning if a build failed.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

SOURCE = Path(__file__).with_name("decoding.cpp")
_loaded: ModuleType | None = None
_tried = False
_lock = threading.Lock()


def unavailable_reason() -> str | None:
    """Why the kernel cannot be used on this machine (None: it can be built here)."""
    if os.environ.get("HEARTMULA_NATIVE", "1") == "0":
        return "turned off by HEARTMULA_NATIVE=0"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        return f"the CPU has no AVX2 (torch reports {capability})"
    return None


def kernels() -> ModuleType | None:
    """The compiled kernel's module (built on the first call if needed), or None where it cannot be used."""
    global _loaded, _tried
    if _tried:
        return _loaded
    with _lock:  # the server's threads may all decode at once: one build
        if not _tried:
            if unavailable_reason() is None:
                try:
                    _loaded = _build()
                except Exception as error:  # a missing compiler or ninja, or a failed build: fall back, loudly
                    last_line = (str(error).strip().splitlines() or [""])[-1]
                    warnings.warn(f"heartmula: the native CPU kernel could not be built, decoding uses torch's "
                                  f"products ({type(error).__name__}: {last_line})", stacklevel=3)
            _tried = True
    return _loaded


def _build() -> ModuleType:
    from torch.utils.cpp_extension import load

    flags = ["-O3", "-mavx2", "-mfma", "-fopenmp"]  # OpenMP: at::parallel_for runs on torch's own thread pool
    # The name changes with the source, the flags and torch, so a stale build is never picked up.
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(flags + [torch.__version__]).encode()).hexdigest()[:12]
    name = f"heartmula_native_{digest}"
    if not _already_built(name):
        print("heartmula: compiling the native CPU kernel for decoding, once (about a minute)", file=sys.stderr)
    return load(name=name, sources=[str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)


def _already_built(name: str) -> bool:
    """Whether torch's extension folder holds this build (only to tell the user why the first call waits)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory  # private: guarded, the answer is cosmetic

        return any(Path(_get_build_directory(name, False)).glob(f"{name}*.so"))
    except Exception:
        return True


def main() -> int:
    """Build the kernel now (set-up does this, so that the first song does not wait for the compiler)."""
    reason = unavailable_reason()
    if reason is not None:
        print(f"heartmula native kernel: not used ({reason})")
        return 0
    if kernels() is None:
        print("heartmula native kernel: the build failed (see the warning above); torch's products are used")
        return 1
    print("heartmula native kernel: ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
