"""Fine-tuning on corpus-style manifests: windows of whole lines, split and voice hold-out, resuming, and the int8
CTranslate2 export that faster-whisper runs. Real tiny.en weights, a few steps on CPU."""

from __future__ import annotations

import json

import pytest

from heartmula.audio import load_audio
from heartmula.errors import HeartMuLaError
from heartmula.eval.lyrics import score
from heartmula.train import transcriber as training
from heartmula.train.transcriber import TranscriberTrainConfig, line_windows, read_manifest, train_transcriber
from heartmula.transcribe import DecodingOptions, TranscribeConfig, Transcriber
from heartmula.transcribe.convert import export_ctranslate2

EN_LINES = ["Every morning I walk along the river.", "The sun is warm and the wind is gentle."]  # pause.wav


@pytest.fixture
def corpus(audio_dir, tmp_path):
    """A manifest like `heartmula data build` writes: pause.wav (two lines 5 s apart) as mix and stem, three rows
    that differ in split and voice."""
    audio, _ = load_audio(audio_dir / "pause.wav", 16000, 1)
    seconds = audio.shape[1] / 16000
    first_end = seconds / 2 - 2.5
    timing = [{"start": 0.0, "end": first_end, "text": EN_LINES[0]},
              {"start": first_end + 5.0, "end": seconds, "text": EN_LINES[1]}]
    row = {"audio": str(audio_dir / "pause.wav"), "vocals": str(audio_dir / "pause.wav"), "lyrics":
           "[verse]\n" + "\n".join(EN_LINES), "language": "en", "duration": seconds, "timing": timing}
    rows = [{**row, "split": "train", "vocal_gender": "female"}, {**row, "split": "test", "vocal_gender": "female"},
            {**row, "split": "train", "vocal_gender": "male"}]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest, timing


def test_long_rows_are_cut_at_lines_and_a_voice_is_held_out(corpus):
    manifest, timing = corpus
    config = TranscriberTrainConfig(split="train", exclude_voices=("en-male",), sources=("audio", "vocals"),
                                    max_seconds=6.0)
    items = read_manifest(manifest, config)
    assert len(items) == 4 and {i.voice for i in items} == {"en-female"}  # 2 windows x (mix, stem)
    assert sorted({(round(i.offset, 2), i.lyrics) for i in items}) == [
        (0.0, EN_LINES[0]), (round(timing[1]["start"] - 0.2, 2), EN_LINES[1])]
    assert all(i.duration <= 6.0 for i in items)
    assert line_windows(timing, 30.0) == [(0.0, timing[1]["end"] + 0.2, "\n".join(EN_LINES))]
    with pytest.raises(HeartMuLaError, match="no items"):
        read_manifest(manifest, TranscriberTrainConfig(split="val"))
    with pytest.raises(HeartMuLaError, match="sources"):
        TranscriberTrainConfig(sources=("stems",)).validate()


def test_an_interrupted_run_resumes_and_the_result_runs_on_ctranslate2(corpus, audio_dir, tmp_path, monkeypatch):
    manifest, _ = corpus
    config = TranscriberTrainConfig(model="tiny.en", steps=3, batch_size=2, learning_rate=3e-5, warmup_steps=0,
                                    freeze_encoder=True, split="train", max_seconds=6.0, save_every=2)
    out = tmp_path / "tuned"
    save = training._save_folder

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_folder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_transcriber([manifest], out, config)
    logged = [json.loads(line) for line in (tmp_path / "tuned.log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logged] == [1, 2, 3] and not out.exists()
    encoded = list((tmp_path / ".tuned.encoded").rglob("*.npy"))
    assert len(encoded) == 2  # the two windows of pause.wav (both train rows share the file)

    def encode_again(*args, **kwargs):
        raise AssertionError("a resumed run encoded audio that the interrupted one had kept")

    monkeypatch.setattr(training, "_save_folder", save)
    monkeypatch.setattr(training._Examples, "_inputs", staticmethod(encode_again))
    report = train_transcriber([manifest], out, config)
    monkeypatch.undo()
    assert report.losses[:2] == pytest.approx([entry["loss"] for entry in logged[:2]], abs=1e-4)
    assert len(report.losses) == 3 and (out / "model.safetensors").is_file()
    assert not (tmp_path / ".tuned.state").exists()  # finished: the checkpoint and encoder outputs are gone
    assert not (tmp_path / ".tuned.encoded").exists()
    with pytest.raises(HeartMuLaError, match="other settings"):
        (tmp_path / ".tuned.state").mkdir()
        (tmp_path / ".tuned.state" / "progress.json").write_text(json.dumps({"step": 1, "settings": {}}))
        train_transcriber([manifest], out, config)

    exported = export_ctranslate2(out, tmp_path / "tuned-ct2")
    fast = DecodingOptions(beam_size=1, temperatures=(0.0,))
    tuned = Transcriber(TranscribeConfig(model=str(exported), language="en", decoding=fast, threads=2))
    assert tuned.backend.name == "ctranslate2" and tuned.backend.compute_type == "int8"
    result = tuned.transcribe(audio_dir / "en.wav")
    assert score((audio_dir / "en.txt").read_text(), result.text, "en", phonemes=False)["wer"] <= 0.2, result.text
