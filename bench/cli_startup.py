"""Start-up of the command line: `heartmula --help` and a verb's `--help` beside `import torch` and beside importing
every module the verbs' handlers import (read from heartmula/cli/*.py with ast): the cost that building the parser
avoids by importing each verb's implementation inside its handler (heartmula.cli).

Each case is a fresh Python process, timed from start to exit; the cases take turns, so that a busy machine slows
all of them alike, and the median of the runs is reported.

    python bench/cli_startup.py            # writes bench/results/cli_startup.json
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _machine import machine

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "heartmula --help": ["-m", "heartmula", "--help"],
    "heartmula generate --help": ["-m", "heartmula", "generate", "--help"],
    "heartmula train lm --help": ["-m", "heartmula", "train", "lm", "--help"],
    "import torch": ["-c", "import torch"],
    "import heartmula.pipeline": ["-c", "import heartmula.pipeline"],
}


def handler_imports() -> list[str]:
    """The heartmula modules imported inside the functions of heartmula/cli/*.py."""
    found = set()
    for path in (ROOT / "src" / "heartmula" / "cli").glob("*.py"):
        for function in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(function, ast.FunctionDef):
                found |= {node.module for node in ast.walk(function) if isinstance(node, ast.ImportFrom)
                          and (node.module or "").startswith("heartmula.")}
    return sorted(found)


def seconds_to_run(arguments: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *arguments], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cli_startup.json")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    implementations = handler_imports()
    cases = {**CASES, "import every verb's implementation": ["-c", "import " + ", ".join(implementations)]}
    times = {name: [] for name in cases}
    for _ in range(args.runs):
        for name, arguments in cases.items():
            times[name].append(seconds_to_run(arguments, env))
    medians = {name: round(statistics.median(values), 3) for name, values in times.items()}
    report = dict(runs=args.runs, median_seconds=medians, verb_implementations=implementations,
                  help_over_import_torch=round(medians["heartmula --help"] / medians["import torch"], 3),
                  machine=machine())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
