"""The native kernel's build can never make a later run wait without bound (killed builds, stale locks, concurrent
builds, several Python environments). Each test builds into its own temporary TORCH_EXTENSIONS_DIR."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from heartmula.nn import extension_build, native
from heartmula.nn.extension_build import BuildTimeout, CompiledExtension

# A Python module in plain C API: builds in about a second with torch's builder, so the lock logic is tested quickly.
TINY_SOURCE = r"""
#include <Python.h>
#define STRINGIFY2(x) #x
#define STRINGIFY(x) STRINGIFY2(x)
#define CONCAT2(a, b) a##b
#define CONCAT(a, b) CONCAT2(a, b)
static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, STRINGIFY(TORCH_EXTENSION_NAME), nullptr, -1, nullptr};
PyMODINIT_FUNC CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
    PyObject* module = PyModule_Create(&module_def);
    PyModule_AddIntConstant(module, "answer", 42);
    return module;
}
"""

LOAD_TINY = textwrap.dedent("""
    import sys
    from pathlib import Path
    from heartmula.nn.extension_build import CompiledExtension
    module = CompiledExtension("tiny", (Path(sys.argv[1]),), wait_seconds=float(sys.argv[2])).load()
    print("answer", module.answer)
""")


@pytest.fixture
def extensions_dir(tmp_path, monkeypatch):
    folder = tmp_path / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(folder))
    return folder


@pytest.fixture
def tiny_source(tmp_path):
    source = tmp_path / "tiny.cpp"
    source.write_text(TINY_SOURCE)
    return source


def load_tiny(python: str, source: Path, wait_seconds: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-c", LOAD_TINY, str(source), str(wait_seconds)], capture_output=True, text=True,
                          timeout=300, env=os.environ.copy())


def compiled(run: subprocess.CompletedProcess) -> bool:
    assert run.returncode == 0, run.stderr
    assert "answer 42" in run.stdout
    return "compiling" in run.stderr


def test_a_finished_build_loads_without_torch_builder_and_ignores_a_stale_lock(extensions_dir, tiny_source,
                                                                               monkeypatch):
    assert compiled(load_tiny(sys.executable, tiny_source))
    build = CompiledExtension("tiny", (tiny_source,))
    assert build.is_built() and not list(build.root.glob("build-*"))  # the scratch folder is gone
    stale = build.library.parent / "lock"
    stale.write_text("")  # as torch's builder leaves it when killed

    import torch.utils.cpp_extension

    def no_builder(*args, **kwargs):
        raise AssertionError("torch's builder was called for a finished build")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_builder)
    notices = []
    assert build.load(notify=notices.append).answer == 42
    assert not stale.exists() and any("stale build lock" in notice for notice in notices)


def test_two_processes_starting_at_once_build_once(extensions_dir, tiny_source):
    runs = [subprocess.Popen([sys.executable, "-c", LOAD_TINY, str(tiny_source), "120"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert all(run.returncode == 0 and "answer 42" in out for run, (out, _) in zip(runs, outputs, strict=True))
    errors = [err for _, err in outputs]
    assert sum("compiling" in err for err in errors) == 1, errors
    assert sum("waiting for it" in err for err in errors) <= 1  # the second waits (unless it came after the build)


def test_a_live_build_is_waited_for_at_most_the_timeout_then_decoding_falls_back(extensions_dir, tiny_source,
                                                                                monkeypatch):
    build = CompiledExtension("tiny", (tiny_source,), wait_seconds=0.5)
    notices = []
    with build._build_lock(notices.append):  # a live process building
        started = time.monotonic()
        with pytest.raises(BuildTimeout):
            CompiledExtension("tiny", (tiny_source,), wait_seconds=0.5).load(notify=notices.append)
        assert time.monotonic() - started < 5
        assert any("waiting for it" in notice for notice in notices)

        monkeypatch.delenv("HEARTMULA_NATIVE", raising=False)
        monkeypatch.setattr(native, "_tried", False)
        monkeypatch.setattr(native, "_loaded", None)
        monkeypatch.setattr(native, "unavailable_reason", lambda: None)
        monkeypatch.setattr(native, "extension", lambda: build)
        with pytest.warns(UserWarning, match="BuildTimeout"):
            assert native.kernels() is None
        assert native.status()["state"] == "failed" and "BuildTimeout" in native.status()["reason"]


def test_two_environments_with_the_same_torch_do_not_rebuild_each_other(extensions_dir, tiny_source, tmp_path):
    pythons = []
    for name in ("env_a", "env_b"):
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(tmp_path / name)],
                       check=True)
        pythons.append(str(tmp_path / name / "bin" / "python"))
    first = [compiled(load_tiny(python, tiny_source)) for python in pythons]
    second = [compiled(load_tiny(python, tiny_source)) for python in pythons]
    assert first.count(True) <= 1 and second == [False, False]  # one build at most, then loads only


def test_the_build_name_changes_with_what_makes_builds_differ(tiny_source, monkeypatch):
    build = CompiledExtension("tiny", (tiny_source,))
    name = build.name
    assert CompiledExtension("tiny", (tiny_source,), cflags=("-O2",)).name != name
    import torch.utils.cpp_extension

    include_paths = torch.utils.cpp_extension.include_paths
    monkeypatch.setattr(torch.utils.cpp_extension, "include_paths", lambda: include_paths() + ["/another/venv"])
    assert build.name != name  # another environment's torch headers: another build
    monkeypatch.setattr(torch.utils.cpp_extension, "include_paths", include_paths)
    tiny_source.write_text(TINY_SOURCE + "\n// changed\n")
    assert build.name != name


@pytest.mark.skipif(native.unavailable_reason() is not None, reason="the native kernels are not used on this CPU")
def test_generate_after_a_build_killed_mid_compile(extensions_dir, tmp_path):
    root = extension_build.extensions_root()
    builder = subprocess.Popen([sys.executable, "-m", "heartmula.nn.native"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(root.glob("build-*/build.ninja")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert builder.poll() is None, "the build ended before it could be killed"
    time.sleep(2)  # the compiler is running now
    os.killpg(builder.pid, signal.SIGKILL)
    builder.wait()
    assert not native.extension().is_built()

    song = tmp_path / "song.wav"
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "heartmula", "generate", "--tags", "pop", "--duration", "2",
                          "--seed", "0", "--out", str(song)], capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr
    assert song.is_file() and "compiling" in run.stderr
    assert native.extension().is_built() and not list(root.glob("build-*"))
    print(f"generate after the killed build: {time.monotonic() - started:.0f} s")


def test_doctor_says_whether_the_kernel_is_built_loaded_or_off(extensions_dir, monkeypatch, capsys):
    from heartmula.cli import main

    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_loaded", None)
    monkeypatch.setenv("HEARTMULA_NATIVE", "0")
    assert main(["doctor"]) == 0
    assert "native kernel: not used: turned off by HEARTMULA_NATIVE=0" in capsys.readouterr().out
    monkeypatch.delenv("HEARTMULA_NATIVE")
    monkeypatch.setattr(native, "unavailable_reason", lambda: None)
    assert main(["doctor"]) == 0  # an empty extensions folder: nothing is compiled by the doctor
    assert "native kernel: not built yet" in capsys.readouterr().out
    assert not native.extension().is_built()
