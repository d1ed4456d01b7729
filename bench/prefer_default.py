"""Preference tuning (DPO, LoRA) of the embedded default LM, judged on the quality report's held-out prompts.

Runs (or resumes) `heartmula train dpo --from default --out WORK ...` with the options below, then the held-out
evaluation of base and tuned model (`--eval-seeds` seeds per prompt; reused from WORK/eval.json when that run wrote
one), and collects: each reward per round (prefer_log.jsonl), the DPO steps, and per model the tag, tempo and drums
win rates, the voiced shares, the two tempo judges that are not rewards, and the LM's real-time factor.

    python bench/prefer_default.py --work work/dpo-default     # writes bench/results/prefer_default.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _machine import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("work/dpo-default"))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--songs-per-prompt", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--eval-seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, help="DPO learning rate (default: train dpo's)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "prefer_default.json")
    args = parser.parse_args()
    command = ["train", "dpo", "--from", "default", "--out", str(args.work), "--rounds", str(args.rounds),
               "--prompts", str(args.prompts), "--songs-per-prompt", str(args.songs_per_prompt), "--seconds",
               str(args.seconds), "--threads", str(args.threads), "--quiet"]
    if args.lr is not None:
        command += ["--lr", str(args.lr)]
    if not (args.work / "eval.json").is_file():
        command += ["--eval-seeds", str(args.eval_seeds)]
    subprocess.run([sys.executable, "-m", "heartmula", *command], check=True)
    log = [json.loads(line) for line in (args.work / "prefer_log.jsonl").read_text().splitlines()]
    evaluation = json.loads((args.work / "eval.json").read_text())
    state = json.loads((args.work / "prefer_state.json").read_text())
    result = {
        "command": "heartmula " + " ".join(command) + f" --eval-seeds {args.eval_seeds}",
        "machine": machine(), "threads": args.threads, "trainable_parameters": state["trainable"],
        "config": state["config"], "rounds": [r for r in log if "round" in r],
        "dpo_steps": [r for r in log if "step" in r],
        "held_out": {name: {"summary": e["summary"], "lm_rtf": e["lm_rtf"]} for name, e in evaluation.items()},
        "held_out_songs": {name: e["songs"] for name, e in evaluation.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["held_out"], indent=1))


if __name__ == "__main__":
    main()
