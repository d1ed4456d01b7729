"""What `pip install` puts on disk, and that the core install makes a song.

For each install (`core` = `pip install .`, and the extras named with --extras), a fresh virtual environment gets the
CPU torch wheel first (as scripts/setup.sh installs it), then this checkout. Reported per install: the size of
site-packages with torch alone and after this package (`du`, MiB), the distributions installed, and for the core
install a 5 s song from the embedded models (`heartmula generate --duration 5`): the first run compiles the native
decoding kernel, the second is timed as a user would see it (with the machine's load average, since other
processes on the same cores slow it down).

    python bench/install_size.py                  # core and all; writes bench/results/install_size.json
    python bench/install_size.py --extras ""      # core only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine

ROOT = Path(__file__).resolve().parents[1]


def site_packages_mib(venv: Path) -> float:
    (folder,) = venv.glob("lib/python*/site-packages")
    kib = int(subprocess.run(["du", "-sk", str(folder)], capture_output=True, text=True, check=True).stdout.split()[0])
    return round(kib / 1024, 1)


def pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args], check=True)


def timed_song(venv: Path, folder: Path) -> dict:
    """Two 5 s songs from the embedded models; the second one's wall time and what generate printed."""
    out = folder / "song.wav"
    command = [str(venv / "bin" / "python"), "-m", "heartmula", "generate", "--duration", "5", "--seed", "0",
               "--out", str(out), "--quiet"]
    subprocess.run(command, cwd=folder, check=True, capture_output=True)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=folder, check=True, capture_output=True, text=True)
    summary = result.stderr.strip().splitlines()[-1].split(": ", 1)[-1]  # "5.04 s at 24000 Hz; compute ..."
    return {"command": "python -m heartmula generate --duration 5 --seed 0 --out song.wav --quiet",
            "wall_seconds": round(time.perf_counter() - started, 1), "summary": summary,
            "load_average_1min": round(os.getloadavg()[0], 2),  # other processes sharing the CPUs slow the song
            "audio_bytes": out.stat().st_size}


def measure(extra: str | None, torch_version: str, song: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="heartmula-install-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip(venv, f"torch=={torch_version}")
        torch_only = site_packages_mib(venv)
        pip(venv, f"{ROOT}[{extra}]" if extra else str(ROOT))
        listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                                capture_output=True, text=True, check=True).stdout
        result = {"pip_install": f".[{extra}]" if extra else ".", "site_packages_mib_torch_only": torch_only,
                  "site_packages_mib": site_packages_mib(venv), "distributions": len(json.loads(listed))}
        result["added_mib"] = round(result["site_packages_mib"] - torch_only, 1)
        if song:
            result["song"] = timed_song(venv, Path(tmp))
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extras", default="all", help="comma-separated extras to measure besides the core")
    parser.add_argument("--torch", default="2.13.0", help="torch version installed first (scripts/setup.sh's)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "install_size.json")
    args = parser.parse_args()
    installs = {"core": measure(None, args.torch, song=True)}
    for extra in filter(None, args.extras.split(",")):
        installs[extra] = measure(extra, args.torch, song=False)
    report = {"command": "python bench/install_size.py" + (f" --extras {args.extras}" if args.extras != "all" else ""),
              "machine": machine(), "python": sys.version.split()[0], "torch": args.torch, "installs": installs}
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
