"""Real Whisper (the embedded base and tiny.en) on real speech made by espeak-ng."""

from __future__ import annotations

import numpy as np
import pytest

from heartmula.audio import save_audio
from heartmula.errors import HeartMuLaError
from heartmula.eval.lyrics import score
from heartmula.transcribe import TranscribeConfig, Transcriber, transcribe
from heartmula.transcribe.models import assembled_base_model


def assert_times_consistent(transcript):
    """Segments and words in time order, inside the file, words inside their line."""
    last = 0.0
    for segment in transcript.segments:
        assert last <= segment.start <= segment.end <= transcript.duration + 1e-6
        for word in segment.words:
            assert segment.start - 1e-6 <= word.start <= word.end <= segment.end + 1e-6
            assert word.start >= last - 1e-6
            last = word.end
        last = segment.end


def test_embedded_base_is_assembled_once_from_the_two_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("HEARTMULA_CACHE", str(tmp_path))
    folder = assembled_base_model()
    assert folder.is_relative_to(tmp_path)
    model_bin = folder / "model.bin"
    assert model_bin.stat().st_size == 145_217_532  # part1 + part2 of the packages
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.bin", "tokenizer.json",
                                                        "vocabulary.txt"]  # no temporary files left
    mtime = model_bin.stat().st_mtime_ns
    assert assembled_base_model() == folder and model_bin.stat().st_mtime_ns == mtime  # not joined again
    with open(model_bin, "r+b") as f:  # a half-written join (size differs) is redone
        f.truncate(1000)
    assembled_base_model()
    assert model_bin.stat().st_size == 145_217_532


def test_english_speech_detected_and_transcribed(base_transcriber, audio_dir):
    result = base_transcriber.transcribe(audio_dir / "en.wav")
    assert result.language == "en" and result.language_probability > 0.5
    rates = score((audio_dir / "en.txt").read_text(), result.text, "en", phonemes=False)
    assert rates["wer"] <= 0.15, result.text
    assert_times_consistent(result)
    assert result.words() and result.segments[0].start < 1.0


def test_spanish_speech_detected_and_transcribed(base_transcriber, audio_dir):
    result = base_transcriber.transcribe(audio_dir / "es.wav")
    assert result.language == "es"
    # espeak-ng's Spanish is far from clear speech; this bound catches a broken pipeline, not model quality.
    rates = score((audio_dir / "es.txt").read_text(), result.text, "es", phonemes=False)
    assert rates["cer"] <= 0.35, result.text
    assert_times_consistent(result)


def test_language_probabilities_name_the_spoken_language(base_transcriber, audio_dir):
    from heartmula.audio import load_audio
    from heartmula.eval.report import heard_language

    for language in ("en", "es"):
        audio, rate = load_audio(audio_dir / f"{language}.wav")
        probabilities = base_transcriber.language_probabilities(audio, rate)
        assert len(probabilities) > 50 and sum(probabilities.values()) == pytest.approx(1.0, abs=1e-3)
        assert heard_language(probabilities) == language
        # what `transcribe` detects, language and probability
        detected = base_transcriber.transcribe(audio_dir / f"{language}.wav")
        assert max(probabilities, key=probabilities.get) == detected.language
        assert probabilities[detected.language] == pytest.approx(detected.language_probability, abs=1e-4)
    silence = np.zeros((1, 16000 * 3), dtype=np.float32)
    assert base_transcriber.language_probabilities(silence, 16000) == {}  # no voice: nothing heard
    assert heard_language({}) is None


def test_forced_language_is_used(audio_dir):
    result = transcribe(audio_dir / "en.wav", language="es", threads=2)
    assert result.language == "es" and result.language_probability == 1.0
    english = transcribe(audio_dir / "en.wav", language="en", threads=2)
    assert result.text != english.text  # decoding under another language token gives other text


def test_english_only_model_rejects_other_languages():
    with pytest.raises(HeartMuLaError, match="English-only"):
        Transcriber(TranscribeConfig(model="tiny.en", language="ja"))


def test_long_pause_starts_a_new_section(tiny_transcriber, audio_dir):
    result = tiny_transcriber.transcribe(audio_dir / "pause.wav")
    assert len(result.segments) >= 2
    sections = [s.section for s in result.segments]
    assert sections[0] == 0 and sections[-1] == 1, [(s.start, s.text, s.section) for s in result.segments]
    gap_start = max(s.end for s in result.segments if s.section == 0)
    assert min(s.start for s in result.segments if s.section == 1) - gap_start >= 3.0


def test_silence_gives_no_lyrics(tiny_transcriber, tmp_path):
    rng = np.random.default_rng(0)
    path = save_audio(tmp_path / "quiet.wav", rng.normal(0, 1e-4, 20 * 16000).astype(np.float32), 16000)
    result = tiny_transcriber.transcribe(path)
    assert result.segments == [] and result.text == ""
    assert result.duration == pytest.approx(20.0)


def test_ten_minute_file_finds_lines_where_they_are(tiny_transcriber, make_speech, tmp_path):
    """A 10-minute file: silence with a spoken line at 1:00, 5:00 and 9:30. Vocal-activity chunking decodes only
    those places, so the lines come back at the right times and nothing is invented elsewhere."""
    line = make_speech("The river runs through the valley.", "en-us")
    audio = np.zeros(600 * 16000, dtype=np.float32)
    starts = [60.0, 300.0, 570.0]
    for start in starts:
        audio[int(start * 16000): int(start * 16000) + len(line)] = line
    path = save_audio(tmp_path / "long.flac", audio, 16000)
    result = tiny_transcriber.transcribe(path)
    assert result.duration == pytest.approx(600.0)
    assert len(result.segments) == 3, [(s.start, s.text) for s in result.segments]
    for segment, start in zip(result.segments, starts):
        assert abs(segment.start - start) < 1.0
        assert "river" in segment.text.lower()
    assert [s.section for s in result.segments] == [0, 1, 2]
    assert_times_consistent(result)


@pytest.mark.parametrize("content", [b"", b"this is not audio at all" * 10])
def test_bad_audio_is_a_user_error(base_transcriber, tmp_path, content):
    path = tmp_path / "broken.wav"
    path.write_bytes(content)
    with pytest.raises(HeartMuLaError, match="broken.wav"):
        base_transcriber.transcribe(path)


def test_missing_file_and_unknown_model_are_user_errors(base_transcriber, tmp_path):
    with pytest.raises(HeartMuLaError, match="does not exist"):
        base_transcriber.transcribe(tmp_path / "nope.wav")
    with pytest.raises(HeartMuLaError, match="neither an embedded model"):
        Transcriber(TranscribeConfig(model="whisper-huge"))
    with pytest.raises(HeartMuLaError, match="not a language"):
        Transcriber(TranscribeConfig(model="base", language="english"))
