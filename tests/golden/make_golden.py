"""Record the golden outputs of `golden_cases.py` with the current code (run from the repository root):

    python3 tests/golden/make_golden.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import golden_cases  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        codes = golden_cases.lm_cases(golden_cases.write_lm_root(Path(tmp)))
    np.savez_compressed(golden_cases.LM_CODES, platform=np.array(golden_cases.platform_key()), **codes)
    digests = {"platform": golden_cases.platform_key(), **golden_cases.codec_cases()}
    golden_cases.CODEC_AUDIO.write_text(json.dumps(digests, indent=2) + "\n")
    print(f"{len(codes)} code arrays, {len(digests) - 1} audio digests recorded")


if __name__ == "__main__":
    main()
