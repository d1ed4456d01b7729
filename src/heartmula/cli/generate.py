"""`heartmula generate`: lyrics + tags -> codes (and audio once a codec is available)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from heartmula.cli import (
    VERSION_HELP,
    add_command,
    add_continue_options,
    add_lm_loading_options,
    check_continue_options,
)
from heartmula.constants import FRAME_RATE
from heartmula.errors import HeartMuLaError
from heartmula.files import atomic_output


def register(verbs) -> None:
    p = add_command(verbs, "generate", help="make a song from lyrics and style tags",
                    description="""Generate a song with a HeartMuLa model. Lyrics may contain [verse]/[chorus]/...
                    section headers; empty lyrics make an instrumental. --tags and --lyrics take the text itself or a
                    file path.""")
    p.add_argument("--model", help="checkpoint root (HeartMuLa-oss-<version>/, tokenizer.json, gen_config.json) "
                   "or a model folder; default: the embedded default model")
    p.add_argument("--version", default="3B", help=VERSION_HELP)
    p.add_argument("--tags", default="", help="comma-separated style tags, e.g. 'pop,piano,happy'; weighted "
                   "prompt mix: 'jazz:0.7,electronic:0.3' or 'jazz,piano:0.7|electronic:0.3'")
    p.add_argument("--lyrics", default="", help="lyrics text or a UTF-8 file; empty = instrumental")
    p.add_argument("--duration", type=float, default=30.0, help="maximum song length in seconds (with --continue: "
                   "of the new music after the kept part)")
    p.add_argument("--min-duration", type=float, default=0.0, help="the song does not end before this many seconds "
                   "(0: the model decides when to end, as upstream; set it to --duration for an exact length)")
    p.add_argument("--topk", type=int, default=50, help="sample among the k most likely codes (1 = greedy)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0 = greedy)")
    p.add_argument("--cfg-scale", type=float, default=1.5, help="classifier-free guidance; 1 = off, 2.5-3 = "
                   "stronger tag control")
    p.add_argument("--lyrics-scale", type=float, help="guidance of the lyrics alone, against the same tags without "
                   "lyrics (larger: the lyrics decide more of the singing); default: the model's gen_config "
                   "`lyrics_scale` if it sets one, else none (one guidance of tags and lyrics together, as upstream)")
    p.add_argument("--seed", type=int, help="random seed for a reproducible song")
    p.add_argument("--reference-audio", type=Path, help="a recording whose style the song should follow: its "
                   "HeartCLAP audio embedding fills the LM's reference-audio slot (the embedded default model was "
                   "trained with it; upstream leaves the slot empty)")
    add_continue_options(p)
    p.add_argument("--clap", help="HeartCLAP model folder for --reference-audio (default: the shipped one)")
    add_lm_loading_options(p)
    p.add_argument("--compile", action="store_true", help="torch.compile the model steps (GPU; slow to start)")
    p.add_argument("--compat", action="store_true", help="reproduce upstream heartlib exactly, bugs included "
                   "(undecodable codes may be sampled, frame 0 is never checked for EOS)")
    p.add_argument("--codes-out", type=Path, help="write the codes as an int .npy of shape [8, T]")
    p.add_argument("--out", type=Path, default=Path("song.wav"), help="audio file to write (.wav/.flac/.mp3)")
    p.add_argument("--codec", help="HeartCodec root or folder for decoding; default: HeartCodec-oss/ beside the LM")
    p.add_argument("--no-decode", action="store_true", help="stop after the language model (needs --codes-out)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from heartmula.audio import load_audio
    from heartmula.lm.generation import SamplingParams
    from heartmula.pipeline import HeartMuLaPipeline
    from heartmula.text import read_text_argument

    if args.no_decode and args.codes_out is None:
        raise HeartMuLaError("--no-decode needs --codes-out FILE.npy, or nothing would be written")
    check_continue_options(args)
    tags = read_text_argument(args.tags, "tags")
    lyrics = read_text_argument(args.lyrics, "lyrics")
    sampling = SamplingParams(temperature=args.temperature, top_k=args.topk, cfg_scale=args.cfg_scale,
                              lyrics_scale=args.lyrics_scale).validate()
    reference = load_audio(args.reference_audio) if args.reference_audio else None  # bad audio fails here, early
    pipe = HeartMuLaPipeline.from_pretrained(args.model, version=args.version, codec=args.codec, device=args.device,
                                             dtype=args.dtype, int8=args.int8, quant=args.quant, compile=args.compile,
                                             lora=args.lora, lora_scale=args.lora_scale,
                                             decode=not args.no_decode)
    clap = None
    if reference is not None and args.clap:
        from heartmula.clap import load_clap

        clap = load_clap(args.clap)
    prompt = pipe.continuation_prompt(args.continue_from, args.from_seconds)
    request = pipe.requests(lyrics, tags, args.seed, reference, clap, prompt=prompt)[0]
    started = time.perf_counter()
    codes = pipe.generate_codes([request], sampling, args.duration, args.min_duration, args.compat,
                                progress=not args.quiet)[0]
    seconds = codes.shape[1] / FRAME_RATE
    lm_seconds = time.perf_counter() - started
    if args.codes_out is not None:
        with atomic_output(args.codes_out) as tmp:
            np.save(tmp, codes)
        print(f"wrote {args.codes_out}: {codes.shape[0]} codebooks x {codes.shape[1]} frames ({seconds:.2f} s)",
              file=sys.stderr)
    if args.no_decode:
        print(f"language model: {lm_seconds:.1f} s of compute (RTF {lm_seconds / max(seconds, 1e-9):.2f})",
              file=sys.stderr)
        return 0
    started = time.perf_counter()
    song = pipe.song_from_codes(codes, lyrics, tags, args.seed, 0 if prompt is None else prompt.shape[1])
    codec_seconds = time.perf_counter() - started
    song.save(args.out)
    print(f"wrote {args.out}: {song.duration:.2f} s at {song.sample_rate} Hz; compute {lm_seconds:.1f} s language "
          f"model + {codec_seconds:.1f} s codec (RTF {(lm_seconds + codec_seconds) / max(seconds, 1e-9):.2f})",
          file=sys.stderr)
    return 0
