"""`heartmula doctor`: what this installation can use, and why not where it cannot."""

from __future__ import annotations

import argparse

from heartmula import __version__


def register(verbs) -> None:
    p = verbs.add_parser("doctor", help="check this installation: devices, native kernel, models, extras",
                         description="Report what heartmula will use here, without building or downloading "
                         "anything: torch and its devices, the native CPU decoding kernel (built, loaded or "
                         "falling back, and why), the embedded default models and the optional extras.")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(handler=run)


def collect() -> dict:
    import platform
    import shutil

    import torch

    from heartmula.nn import native

    if native.status()["state"] == "built":
        native.kernels()  # a finished build only loads (no compiler runs): shows whether it loads here
    return {
        "heartmula": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "devices": {"cpu": f"{torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}",
                    "cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0,
                    "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())},
        "native_kernel": native.status(),
        "ffmpeg": shutil.which("ffmpeg") or None,
    }


def describe_native(status: dict) -> str:
    state = status["state"]
    if state == "off":
        return f"not used: {status['reason']}; decoding uses torch's products"
    if state == "failed":
        return f"falling back to torch's products: {status['reason']}"
    if state == "not built":
        return "not built yet: the first song compiles it (about a minute), or run `python3 -m heartmula.nn.native`"
    return f"{state}: {status['library']}"


def run(args: argparse.Namespace) -> int:
    import json

    report = collect()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    devices = report["devices"]
    print(f"heartmula {report['heartmula']} (Python {report['python']}, torch {report['torch']})")
    print(f"cpu:           {devices['cpu']}")
    print(f"cuda:          {devices['cuda'] or 'none'}    mps: {'yes' if devices['mps'] else 'no'}")
    print(f"native kernel: {describe_native(report['native_kernel'])}")
    print(f"ffmpeg:        {report['ffmpeg'] or 'not found (mp3 and other formats soundfile cannot write)'}")
    return 0
