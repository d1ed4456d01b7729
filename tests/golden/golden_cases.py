"""The cases whose outputs are recorded in this folder (`make_golden.py`) and checked by `test_golden.py`.

Each case runs the current code on a tiny random-weight model written here, so the recorded outputs pin down what
the code computes: a restructuring that changes any code or sample fails the test. The recorded values depend on the
float rounding of the CPU kernels in use, so they are stored with a description of the platform and the test is
skipped on another one.
"""

from __future__ import annotations

import hashlib
import platform
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from heartmula.lm.generation import SamplingParams, SongRequest
from heartmula.lm.pretrained import load_generator, write_random_root
from heartmula.nn import layers, native
from heartmula.nn.quant import quantize_int8

HERE = Path(__file__).resolve().parent
LM_CODES = HERE / "lm_codes.npz"
CODEC_AUDIO = HERE / "codec_audio_sha256.json"
FRAMES = 24
LYRICS = "[verse]\nthe morning light\n[chorus]\nsing it loud\n"
SONGS = [SongRequest(LYRICS, "pop,piano", seed=1), SongRequest("", "rock;jazz:0.3", seed=2)]


def platform_key() -> str:
    """What the recorded values depend on: the CPU's vector unit, which product path torch takes, the native kernel."""
    return (f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()} "
            f"transposed={layers.TRANSPOSED_FEW_ROWS} native={native.unavailable_reason() is None} "
            f"torch={torch.__version__.split('+')[0]}")


@contextmanager
def torch_products_only():
    """Decode as on a machine without the native kernel."""
    kernels = native.kernels
    native.kernels = lambda: None
    try:
        yield
    finally:
        native.kernels = kernels


def _codes(generator, songs, sampling, **options) -> list[np.ndarray]:
    """Every frame of every song [K, FRAMES + 1], also those past a song's end, and the songs' lengths last."""
    session = generator.start(songs, sampling, FRAMES, **options)
    codes = torch.stack([session.next_frame().codes for _ in range(FRAMES + 1)], dim=-1)
    lengths = session.lengths.clone()
    session.close()
    return [*codes.numpy(), lengths.numpy()]


def _controlled_session(generator) -> list[np.ndarray]:
    """A song whose prompts change mid-way, paused and resumed from its saved state."""
    session = generator.start([SongRequest(LYRICS, "pop", seed=5)], SamplingParams(cfg_scale=2.0), FRAMES)
    frames = [session.next_frame().codes for _ in range(6)]
    session.add_prompt(0, "metal,drums", [0.6, 0.4])
    frames += [session.next_frame().codes for _ in range(6)]
    tensors, meta = session.state_dict()
    session.close()
    session = type(session).from_state(generator, tensors, meta)
    session.remove_prompt(0, 0, [1.0])
    session.update_sampling(temperature=0.8, cfg_scale=1.5)
    frames += [session.next_frame().codes for _ in range(FRAMES + 1 - len(frames))]
    lengths = session.lengths.clone()
    session.close()
    return [torch.stack(frames, dim=-1)[0].numpy(), lengths.numpy()]


def lm_cases(root: Path) -> dict[str, np.ndarray]:
    """Codes of every case, keyed `case.song` (`case.<songs>` holds the songs' lengths)."""
    generator = load_generator(root)
    cases = {
        "default": _codes(generator, SONGS, SamplingParams()),
        "compat": _codes(generator, SONGS, SamplingParams(), compat=True),
        "greedy": _codes(generator, SONGS, SamplingParams(top_k=1)),
        "unguided": _codes(generator, SONGS, SamplingParams(cfg_scale=1.0)),
        "lyrics_scale": _codes(generator, SONGS, SamplingParams(lyrics_scale=3.0)),
        "min_frames": _codes(generator, SONGS[:1], SamplingParams(temperature=1.5), min_new_frames=FRAMES // 2),
        "controls": _controlled_session(generator),
    }
    with torch_products_only():
        cases["torch_products"] = _codes(generator, SONGS, SamplingParams())
        cases["torch_products_compat"] = _codes(generator, SONGS, SamplingParams(), compat=True)
    cases["bfloat16"] = _codes(load_generator(root, dtype="bfloat16"), SONGS, SamplingParams())
    int8 = load_generator(root)
    quantize_int8(int8.model)
    cases["int8"] = _codes(int8, SONGS, SamplingParams())
    for quant in ("int8", "int4"):
        quantized = load_generator(root, weights=quant)
        cases[f"quant_{quant}"] = _codes(quantized, SONGS, SamplingParams())
        cases[f"quant_{quant}_compat"] = _codes(quantized, SONGS, SamplingParams(), compat=True)
    return {f"{name}.{i}": codes for name, songs in cases.items() for i, codes in enumerate(songs)}


def write_lm_root(folder: Path) -> Path:
    write_random_root(folder, "tiny", seed=0)
    return folder


def codec_cases() -> dict[str, str]:
    """sha256 of the decoded audio bytes (float32) of each case."""
    from heartmula.codec.config import tiny_config
    from heartmula.codec.model import HeartCodec

    codec = HeartCodec(tiny_config()).init_weights(3).eval()
    codes = torch.randint(0, 64, (8, 40), generator=torch.Generator().manual_seed(4))
    digests = {}
    for mode in ("default", "compat"):
        audio, _ = codec.decode(codes, mode=mode, steps=3, seed=7)
        digests[mode] = hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()
    return digests
