"""`heartmula stream`: generate a song in real time, writing (and optionally playing) it while it is made."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from heartmula.cli import (
    add_command,
    add_continue_options,
    add_lm_loading_options,
    add_song_model_options,
    check_continue_options,
)
from heartmula.constants import FRAME_RATE
from heartmula.errors import HeartMuLaError


def register(verbs) -> None:
    p = add_command(verbs, "stream", help="generate a song in real time, steerable by a scripted control file",
                    description="""Stream a song: frames are generated and decoded chunk by chunk, written to --out as
                    they come (the WAV is valid at every moment, so it can be opened while it grows) and played with
                    --play. A control file changes prompts and sampling at given times of the song, reproducibly.""")
    add_song_model_options(p, "LM checkpoint root or model folder (default: the embedded default model)")
    p.add_argument("--lyrics", default="", help="lyrics text or a UTF-8 file; empty = instrumental")
    p.add_argument("--tags", default="", help="style tags, or a weighted mix such as 'jazz:0.7,electronic:0.3' "
                   "(the controls file can change it later)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0 = greedy)")
    p.add_argument("--topk", type=int, default=50, help="sample among the k most likely codes")
    p.add_argument("--cfg-scale", type=float, default=1.5, help="classifier-free guidance (1 = off)")
    p.add_argument("--seed", type=int, help="random seed: the same seed and control file give the same song")
    p.add_argument("--duration", type=float, default=60.0, help="maximum song length in seconds (with --continue: "
                   "of the new music after the kept part)")
    p.add_argument("--min-duration", type=float, default=0.0, help="the song does not end before this many seconds "
                   "(0: the model decides when to end)")
    p.add_argument("--controls", type=Path, help="scripted control changes: a .json list of {\"at\": seconds, "
                   "controls...} or a text file of lines 'TIME key=value ...' (TIME as 12.5, 12.5s or f150; keys: "
                   "prompts, temperature, top_k, cfg_scale); see heartmula.stream.controls")
    add_continue_options(p)
    p.add_argument("--prompt-audio", type=Path, help="continue from this audio (encoded by the codec, which needs "
                   "an encoder) as from audio just heard: it is not played again (--continue plays the kept part)")
    p.add_argument("--reference-audio", type=Path, help="style reference: this audio's HeartCLAP embedding goes "
                   "into the LM's reference-audio slot")
    p.add_argument("--clap", help="HeartCLAP model folder for --reference-audio (default: the shipped one)")
    p.add_argument("--chunk-frames", type=int, help="code frames (80 ms each) per audio chunk; default 2 with a "
                   "direct-decoder codec, 12 with a flow-matching codec")
    p.add_argument("--lookahead-frames", type=int, help="direct decoder: frames of right context to wait for "
                   "(default: its full receptive field = exact; fewer = lower latency, approximate)")
    p.add_argument("--out", type=Path, default=Path("live.wav"), help="WAV file written while the song streams")
    p.add_argument("--play", action="store_true", help="play through the default sound device (needs the "
                   "optional sounddevice package: pip install 'heartmula[play]')")
    p.add_argument("--buffer", type=float, default=0.5, help="with --play: seconds of audio kept ready ahead of "
                   "playback (grows after an underrun)")
    p.add_argument("--threads", type=int, help="torch CPU threads for generation (default: every core; the "
                   "player needs almost none)")
    p.add_argument("--save-state", type=Path, help="write the session state here at the end or on Ctrl-C")
    p.add_argument("--resume", type=Path, help="continue a session saved with --save-state (same model and "
                   "codec; the lyrics/tags/sampling options are then taken from the state)")
    add_lm_loading_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def _sounddevice():
    try:
        import sounddevice
    except (ImportError, OSError) as exc:
        raise HeartMuLaError(f"--play needs the sounddevice package and PortAudio ({exc}); install them with "
                             "`pip install 'heartmula[play]'` and `apt-get install libportaudio2`, or drop --play "
                             "and open the --out file") from None
    return sounddevice


def _open_sound_device(rate: int, channels: int, pacer):
    sounddevice = _sounddevice()

    def callback(out, frames, _time, _status):
        out[:] = pacer.read(frames).T

    try:
        return sounddevice.OutputStream(samplerate=rate, channels=channels, dtype="float32", callback=callback)
    except Exception as exc:  # PortAudioError and friends: no device

        raise HeartMuLaError(f"--play: no usable sound device ({exc}); drop --play and open the --out file") from None


def _new_session(args: argparse.Namespace, pipe):
    from heartmula.audio import load_audio
    from heartmula.stream import StreamControls
    from heartmula.text import read_text_argument

    controls = StreamControls(prompts=read_text_argument(args.tags, "tags"), temperature=args.temperature,
                              top_k=args.topk, cfg_scale=args.cfg_scale)
    prompt_audio = load_audio(args.prompt_audio) if args.prompt_audio else None
    reference_audio, clap = None, None
    if args.reference_audio:
        from heartmula.clap import load_clap

        clap = load_clap(args.clap)
        reference_audio = load_audio(args.reference_audio)
    return pipe.stream(read_text_argument(args.lyrics, "lyrics"), controls=controls, seed=args.seed,
                       duration=args.duration, continue_from=args.continue_from,
                       from_seconds=args.from_seconds, min_seconds=args.min_duration,
                       chunk_frames=args.chunk_frames, lookahead_frames=args.lookahead_frames,
                       prompt_audio=prompt_audio, reference_audio=reference_audio, clap=clap)


def _play(session, lookahead_seconds: float, write) -> None:
    """Play the stream on the sound device while writing every chunk with `write`."""
    from heartmula.stream import Pacer

    pacer = Pacer(session, lookahead_seconds=lookahead_seconds, on_chunk=write)
    # The device plays silence until the look-ahead is buffered; generation runs in this thread, the
    # one that loaded the models (see heartmula.stream.pacer on why that is faster).
    with _open_sound_device(session.sample_rate, session.channels, pacer):
        pacer.produce()
        while not pacer.done:
            time.sleep(0.05)
        time.sleep(0.2)  # let the device play out its last block
    stats = pacer.stop()
    if stats.error:
        raise HeartMuLaError(f"the stream failed: {stats.error}")
    print(f"playback: {stats.underruns} underruns ({stats.underrun_seconds:.2f} s of silence)"
          + (f"; degraded: {', '.join(stats.degradations)}" if stats.degradations else ""),
          file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from heartmula.audio import LiveWavWriter
    from heartmula.pipeline import HeartMuLaPipeline
    from heartmula.stream import StreamSession, read_control_script

    if args.out.suffix.lower() != ".wav":
        raise HeartMuLaError(f"--out must be a .wav file (it stays readable while it grows), got {args.out}")
    check_continue_options(args)
    if args.continue_from is not None and (args.prompt_audio or args.resume):
        raise HeartMuLaError("--continue starts a new stream from a song: give it without --prompt-audio and "
                             "--resume")
    if args.threads is not None and args.threads < 1:
        raise HeartMuLaError(f"--threads must be at least 1, got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    script = read_control_script(args.controls) if args.controls else []
    if args.play:
        _sounddevice()  # fail before loading anything
    pipe = HeartMuLaPipeline.from_pretrained(args.model, version=args.version, codec=args.codec, device=args.device,
                                             dtype=args.dtype, int8=args.int8, lora=args.lora,
                                             lora_scale=args.lora_scale, quant=args.quant)
    started = time.perf_counter()
    if args.resume:
        session = StreamSession.resume(pipe.generator, pipe.codec, args.resume)
    else:
        session = _new_session(args, pipe)
    for change in script:
        if change.frame >= session.frames_generated:
            session.schedule(change.frame, **change.changes)

    bar = None
    if not args.quiet:
        from tqdm import tqdm

        total = session.max_seconds + session.played_prompt_frames / FRAME_RATE
        bar = tqdm(total=round(total, 1), unit="s", desc="streaming", bar_format="{l_bar}{bar}| "
                   "{n:.1f}/{total:.1f} s [{elapsed}<{remaining}]")
    first_audio = None
    with LiveWavWriter(args.out, session.sample_rate, session.channels) as writer:

        def write(chunk):
            nonlocal first_audio
            if first_audio is None:
                first_audio = time.perf_counter() - started
            writer.write(chunk.audio)
            if bar is not None:
                bar.total = max(bar.total, round(bar.n + chunk.seconds, 1))  # the last frame may pass max_seconds
                bar.update(chunk.seconds)

        try:
            if args.play:
                _play(session, args.buffer, write)
            else:
                for chunk in session:
                    write(chunk)
        except KeyboardInterrupt:
            if args.save_state:
                session.save_state(args.save_state)
                print(f"interrupted: state saved to {args.save_state}", file=sys.stderr)
            raise
        finally:
            if bar is not None:
                bar.close()
        seconds = writer.samples / session.sample_rate
    elapsed = time.perf_counter() - started
    if args.save_state:
        session.save_state(args.save_state)
    session.close()
    rtf = elapsed / seconds if seconds else float("nan")
    first = f"{first_audio:.2f} s" if first_audio is not None else "none"
    print(f"wrote {args.out}: {seconds:.2f} s at {session.sample_rate} Hz; first audio after {first}, RTF "
          f"{rtf:.2f}, {session.controls_version} control changes applied", file=sys.stderr)
    return 0
