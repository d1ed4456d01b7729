"""Build and load a C++ extension module so that no killed process can make a later one wait for ever.

torch's JIT builder (`torch.utils.cpp_extension.load`) guards its build folder with a `lock` file that only the
process which made it removes: a build killed by SIGKILL, a closed terminal or an OOM kill leaves it behind, and every
later `load` of that name waits for it silently. Here instead:

- a finished build is one file, `<root>/<name>/<name>.so`, loaded directly with importlib (torch's builder is not
  called at all);
- a build runs in a fresh temporary folder, under an exclusive `flock` on `<root>/<name>.lock` that the kernel
  releases when its holder dies however it dies, and only the finished `.so` is renamed into place;
- a process that finds another live process building waits for it, with a message, at most `wait_seconds`, then
  gives up (the caller falls back);
- the name hashes everything that makes two builds differ (the sources, the flags, torch, the Python ABI and the
  include paths), so two environments never overwrite each other's build.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

BUILD_PREFIX = "build-"  # temporary build folders: `build-<name>-XXXX` in the root


class BuildTimeout(RuntimeError):
    """Another live process held the build lock for longer than the caller would wait."""


def extensions_root() -> Path:
    """The folder that holds heartmula's builds: $TORCH_EXTENSIONS_DIR/heartmula, else ~/.cache/torch_extensions/..."""
    base = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch_extensions")
    return Path(base) / "heartmula"


@dataclass(frozen=True)
class CompiledExtension:
    """One C++ extension: its sources and compiler flags, and where its build lives."""

    prefix: str  # the module name's stem; the build's name is `<prefix>_<digest>`
    sources: tuple[Path, ...]
    cflags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()
    wait_seconds: float = 600.0  # how long to wait for another process's build before giving up
    headers: tuple[Path, ...] = ()  # files the sources include: part of the digest, not compiled
    root: Path = field(default_factory=extensions_root)

    @property
    def name(self) -> str:
        return f"{self.prefix}_{self.digest()}"

    @property
    def library(self) -> Path:
        return self.root / self.name / f"{self.name}.so"

    def digest(self) -> str:
        """A hash of everything a build depends on: two builds with the same digest are interchangeable."""
        from torch.utils.cpp_extension import include_paths

        parts = [source.read_bytes() for source in self.sources + self.headers]
        parts += [" ".join(self.cflags + self.ldflags).encode(), torch.__version__.encode(),
                  (sys.implementation.cache_tag or "").encode(), str(sysconfig.get_config_var("EXT_SUFFIX")).encode(),
                  "\n".join(include_paths() + [sysconfig.get_paths()["include"]]).encode()]
        return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]

    def is_built(self) -> bool:
        return self.library.is_file()

    def load(self, notify=None) -> ModuleType:
        """The module, loaded from a finished build, else built first (one process builds, the others wait).

        `notify(message)` hears what takes long (a compile, a wait for another process); default: standard error.
        Raises BuildTimeout after `wait_seconds` of waiting, or the compiler's error.
        """
        notify = notify or _print_notice
        if self.is_built():
            self._remove_torch_lock(notify)
            return _import_library(self.name, self.library)
        with self._build_lock(notify):
            if not self.is_built():  # another process may have finished it while we waited
                notify(f"heartmula: compiling the native CPU kernel ({self.name}), once (about a minute)")
                self._build_into_place()
        return _import_library(self.name, self.library)

    def _build_into_place(self) -> None:
        from torch.utils.cpp_extension import load

        self.root.mkdir(parents=True, exist_ok=True)
        scratch_prefix = f"{BUILD_PREFIX}{self.name}-"
        for stale in self.root.glob(f"{scratch_prefix}*"):  # left by killed builds: none can be running now
            shutil.rmtree(stale, ignore_errors=True)
        scratch = Path(tempfile.mkdtemp(prefix=scratch_prefix, dir=self.root))
        try:
            load(name=self.name, sources=[str(source) for source in self.sources], extra_cflags=list(self.cflags),
                 extra_ldflags=list(self.ldflags), build_directory=str(scratch), verbose=False)
            self.library.parent.mkdir(exist_ok=True)
            os.replace(scratch / f"{self.name}.so", self.library)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _remove_torch_lock(self, notify) -> None:
        """A torch-style `lock` file beside a finished build is left by a killed builder: it blocks nothing here."""
        stale = self.library.parent / "lock"
        if stale.exists():
            notify(f"heartmula: removing a stale build lock left by a killed process: {stale}")
            stale.unlink(missing_ok=True)

    def _build_lock(self, notify) -> _FileLock:
        return _FileLock(self.root / f"{self.name}.lock", self.wait_seconds, notify)


class _FileLock:
    """An exclusive `flock` on a file: released by the kernel when the holding process exits, however it exits."""

    def __init__(self, path: Path, wait_seconds: float, notify):
        self.path, self.wait_seconds, self.notify = path, wait_seconds, notify
        self.handle = None

    def __enter__(self) -> _FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a")
        deadline, told = time.monotonic() + self.wait_seconds, False
        while True:
            try:
                fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if not told:
                self.notify(f"heartmula: another process is building the native CPU kernel; waiting for it "
                            f"(at most {self.wait_seconds:.0f} s)")
                told = True
            if time.monotonic() >= deadline:
                self.handle.close()
                raise BuildTimeout(f"another process held {self.path} for more than {self.wait_seconds:.0f} s")
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _import_library(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, str(path), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules[name] = module
    return module


def _print_notice(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
