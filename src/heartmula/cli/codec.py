"""`heartmula encode` (audio -> codes) and `heartmula decode` (codes -> audio) with a HeartCodec."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from heartmula.cli import add_command
from heartmula.constants import FRAME_RATE
from heartmula.errors import HeartMuLaError
from heartmula.files import atomic_output, load_codes

MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def _add_model(p) -> None:
    p.add_argument("--model", help="checkpoint root (with HeartCodec-oss/) or a codec folder (default: the codec "
                   "shipped in heartmula/defaults/codec)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", help="torch device: auto (CUDA, else MPS, else CPU), cpu, cuda, mps")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def register(verbs) -> None:
    enc = add_command(verbs, "encode", help="turn audio into codec codes ([8, T] at 12.5 Hz)",
                      description="""Encode an audio file (any format ffmpeg or soundfile reads, any sample rate: it is
                      resampled to the codec's) into an int .npy of shape [8, frames]. Needs a codec with a trained
                      encoder.""")
    enc.add_argument("audio", type=Path)
    enc.add_argument("--codes-out", type=Path, required=True, help="where to write the codes (.npy)")
    _add_model(enc)
    enc.set_defaults(handler=run_encode)

    dec = add_command(verbs, "decode", help="turn codec codes into audio",
                      description="""Decode an int .npy of codes [8, frames] into audio (.wav, .flac, .mp3, .ogg). The
                      default mode sizes windows to the content; --mode compat reproduces upstream heartlib sample for
                      sample.""")
    dec.add_argument("codes", type=Path, help=".npy file of codes [8, frames]")
    dec.add_argument("--out", type=Path, default=Path("song.wav"), help="audio file to write")
    _add_model(dec)
    dec.add_argument("--mode", default="default", choices=["default", "compat"])
    dec.add_argument("--steps", type=int, default=10, help="flow-matching Euler steps")
    dec.add_argument("--guidance", type=float, default=1.25, help="classifier-free guidance (1 = off, faster)")
    dec.add_argument("--window", type=int, default=372, help="code frames per window (372 = 29.76 s)")
    dec.add_argument("--overlap", type=int, default=52, help="code frames shared by consecutive windows")
    dec.add_argument("--seed", type=int, help="noise seed for a reproducible decode")
    dec.add_argument("--reference", type=Path, help="compare the result with this recording and print metrics")
    dec.set_defaults(handler=run_decode)


def _load(args):
    from heartmula.codec import load_codec
    from heartmula.pipeline import resolve_device

    return load_codec(args.model, dtype=args.dtype, device=resolve_device(args.device))


def run_encode(args: argparse.Namespace) -> int:
    import numpy as np

    from heartmula.audio import load_audio

    codec = _load(args)
    if not codec.can_encode:
        raise HeartMuLaError(f"the codec in {args.model or 'heartmula/defaults/codec'} has no trained encoder; "
                             "train one with `heartmula train codec` (the official release ships only the decoder)")
    audio, rate = load_audio(args.audio)
    if float(np.abs(audio).max()) == 0.0:
        raise HeartMuLaError(f"{args.audio} is digital silence: there is nothing to encode")
    codes = codec.encode(audio, rate)
    with atomic_output(args.codes_out) as tmp:
        np.save(tmp, codes)
    if not args.quiet:
        print(f"wrote {args.codes_out}: {codes.shape[0]} codebooks x {codes.shape[1]} frames "
              f"({codes.shape[1] / FRAME_RATE:.2f} s)", file=sys.stderr)
    return 0


def run_decode(args: argparse.Namespace) -> int:
    import time

    from heartmula.audio import load_audio, save_audio
    from heartmula.codec.decoding import DecodeOptions

    codes = load_codes(args.codes)
    codec = _load(args)
    options = DecodeOptions(mode=args.mode, steps=args.steps, guidance_scale=args.guidance,
                            window_frames=args.window, overlap_frames=args.overlap, seed=args.seed,
                            progress=not args.quiet)
    began = time.perf_counter()
    audio, rate = codec.decode(codes, options)
    seconds = time.perf_counter() - began
    if args.out.suffix.lower() == ".mp3" and rate not in MP3_RATES:
        from heartmula.audio import resample

        audio, rate = resample(audio, rate, 48000), 48000  # MP3 has a fixed set of sample rates
    save_audio(args.out, audio, rate)
    if not args.quiet:
        duration = audio.shape[-1] / rate
        print(f"wrote {args.out}: {duration:.2f} s at {rate} Hz, decoded in {seconds:.2f} s "
              f"(RTF {seconds / max(duration, 1e-9):.3f})", file=sys.stderr)
    if args.reference is not None:
        import json

        from heartmula.eval.codec_metrics import codec_report

        reference, _ = load_audio(args.reference, sample_rate=rate, channels=audio.shape[0])
        print(json.dumps(codec_report(audio, reference[:, : audio.shape[-1]], rate)))
    return 0
