"""CTranslate2 -> transformers conversion checked against CTranslate2 itself; the transformers backend; a few steps
of fine-tuning on a tiny manifest, on CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from heartmula.errors import HeartMuLaError
from heartmula.eval.lyrics import score
from heartmula.transcribe import DecodingOptions, TranscribeConfig, Transcriber
from heartmula.transcribe.convert import convert_ct2_to_transformers
from heartmula.transcribe.models import locate_model


@pytest.fixture(scope="module")
def converted_tiny(tmp_path_factory):
    return convert_ct2_to_transformers(locate_model("tiny.en").path, tmp_path_factory.mktemp("hf") / "tiny")


def test_converted_model_matches_ctranslate2(converted_tiny, audio_dir):
    import ctranslate2
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    from heartmula.audio import load_audio

    audio, _ = load_audio(audio_dir / "en.wav", 16000, 1)
    features = WhisperFeatureExtractor.from_pretrained(converted_tiny)(
        audio[0], sampling_rate=16000, return_tensors="np").input_features
    model = WhisperForConditionalGeneration.from_pretrained(converted_tiny).eval()
    reference = ctranslate2.models.Whisper(str(locate_model("tiny.en").path), compute_type="float32")
    storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(features))
    with torch.no_grad():
        encoded = model.model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    assert np.abs(encoded - np.array(reference.encode(storage, to_cpu=True))).max() < 5e-3

    generation = model.generation_config
    prompt = [generation.decoder_start_token_id, generation.no_timestamps_token_id]
    # suppress_blank off: transformers' begin-suppression comes from the generation config instead
    expected = reference.generate(storage, [prompt], beam_size=1, max_length=100, suppress_blank=False)
    expected = expected[0].sequences_ids[0]
    with torch.no_grad():
        tokens = model.generate(torch.from_numpy(features), num_beams=1, do_sample=False, max_new_tokens=100)[0]
    tokens = [t for t in tokens.tolist() if t < generation.eos_token_id]
    assert tokens == expected and len(tokens) > 10


def test_fine_tune_a_few_steps_then_transcribe_with_the_result(audio_dir, tmp_path):
    from heartmula.train.transcriber import TranscriberTrainConfig, train_transcriber

    manifest = tmp_path / "corpus" / "manifest.jsonl"
    manifest.parent.mkdir()
    lyrics = (audio_dir / "en.txt").read_text()
    items = [{"audio": str(audio_dir / "en.wav"), "lyrics": "[verse]\n" + lyrics, "language": "en"},
             {"audio": str(audio_dir / "pause.wav"), "lyrics": lyrics, "language": "en"}]
    manifest.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))
    config = TranscriberTrainConfig(model="tiny.en", steps=3, batch_size=2, learning_rate=3e-5, warmup_steps=0,
                                    freeze_encoder=True)
    out = tmp_path / "tuned"
    report = train_transcriber([manifest], out, config)
    assert report.items == 2 and len(report.losses) == 3
    assert report.losses[-1] < report.losses[0]  # the same batch, three steps: the loss must go down
    assert (out / "model.safetensors").is_file() and not list(tmp_path.glob(".tuned.partial*"))

    fast = DecodingOptions(beam_size=1, temperatures=(0.0,))
    tuned = Transcriber(TranscribeConfig(model=str(out), language="en", decoding=fast, threads=2))
    assert tuned.backend.name == "transformers"
    result = tuned.transcribe(audio_dir / "en.wav")
    assert score(lyrics, result.text, "en", phonemes=False)["wer"] <= 0.2, result.text
    assert result.segments and all(s.start <= s.end for s in result.segments)


def test_manifest_errors_name_the_line(tmp_path):
    from heartmula.train.transcriber import read_manifest

    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio": "a.wav", "lyrics": "x"}\n')
    with pytest.raises(HeartMuLaError, match=r"m.jsonl:1"):
        read_manifest(manifest)
    manifest.write_text('{"audio": "missing.wav", "lyrics": "x", "language": "en"}\n')
    with pytest.raises(HeartMuLaError, match="missing.wav"):
        read_manifest(manifest)


def test_manifest_skips_instrumental_rows(tmp_path):
    from heartmula.train.transcriber import read_manifest

    (tmp_path / "sung.wav").write_bytes(b"")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio": "inst.wav", "lyrics": "", "language": null}\n'
                        '{"audio": "sung.wav", "lyrics": "la la", "language": "es"}\n')
    items = read_manifest(manifest)
    assert [(i.audio.name, i.language) for i in items] == [("sung.wav", "es")]
    manifest.write_text('{"audio": "inst.wav", "lyrics": "", "language": null}\n')
    with pytest.raises(HeartMuLaError, match="no items with lyrics"):
        read_manifest(manifest)


def test_truncated_model_file_is_a_user_error(tmp_path):
    from heartmula.transcribe.convert import read_ct2_model

    source = locate_model("tiny.en").path / "model.bin"
    broken = tmp_path / "model.bin"
    with open(source, "rb") as f:
        broken.write_bytes(f.read(5_000_000))
    with pytest.raises(HeartMuLaError, match="truncated"):
        read_ct2_model(broken)
