"""Optional C++ kernels for decoding with float32 or bfloat16 weights on x86 CPUs with AVX2 + FMA (`decoding.cpp`):
the few-row products of `heartmula.nn.layers.linear`, a whole transformer step over a few new tokens
(`heartmula.nn.transformer`), the top-k sampler (`heartmula.nn.sampling`) and the local decoder's loop over a
frame's codebooks 1..K-1 (`heartmula.lm.generation`).

It is compiled once per machine and environment (g++ and ninja, about a minute; `scripts/setup.sh` does it ahead of
time: `python3 -m heartmula.nn.native`) into $TORCH_EXTENSIONS_DIR/heartmula, else ~/.cache/torch_extensions/heartmula,
by `heartmula.nn.extension_build`: a killed build never blocks a later run. Where it cannot be used (another CPU, no
compiler, a failed build, another process's build that takes too long, or HEARTMULA_NATIVE=0) `kernels()` returns
None and the callers keep torch's own products, with one warning if a build failed. `status()` says which, and why
(`heartmula doctor`).
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

from heartmula.nn.extension_build import CompiledExtension

SOURCES = tuple(Path(__file__).with_name(name) for name in ("decoding.cpp", "quantized_products.cpp"))
HEADERS = (Path(__file__).with_name("weight_matrix.h"),)
_loaded: ModuleType | None = None
_tried = False
_failure: str | None = None
_lock = threading.Lock()


def extension() -> CompiledExtension:
    """The decoding kernels' build: OpenMP, so at::parallel_for runs on torch's own thread pool."""
    wait = float(os.environ.get("HEARTMULA_NATIVE_WAIT", "600"))
    return CompiledExtension("heartmula_native", SOURCES, cflags=("-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"),
                             ldflags=("-fopenmp",), wait_seconds=wait, headers=HEADERS)


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
    global _loaded, _tried, _failure
    if _tried:
        return _loaded
    with _lock:  # the server's threads may all decode at once: one build
        if not _tried:
            if unavailable_reason() is None:
                try:
                    _loaded = _build()
                except Exception as error:  # no compiler or ninja, a failed build, a wait that timed out: fall back
                    last_line = (str(error).strip().splitlines() or [""])[-1]
                    _failure = f"{type(error).__name__}: {last_line}"
                    warnings.warn(f"heartmula: the native CPU kernel could not be built, decoding uses torch's "
                                  f"products ({_failure})", stacklevel=3)
            _tried = True
    return _loaded


def _build() -> ModuleType:
    return extension().load()


def status() -> dict:
    """What decoding uses, without building anything: `state` is one of "off" (with the reason), "loaded", "failed"
    (with the error), "built" (on disk, not loaded by this process yet) or "not built" (the first song compiles it)."""
    reason = unavailable_reason()
    build = extension()
    info = {"library": str(build.library)}
    if reason is not None:
        return {**info, "state": "off", "reason": reason}
    if _tried:
        return {**info, "state": "loaded"} if _loaded is not None else {**info, "state": "failed", "reason": _failure}
    return {**info, "state": "built" if build.is_built() else "not built"}


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
