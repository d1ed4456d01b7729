"""The streaming style-change demo: its control script, the sliding-window similarity analysis (on synthetic audio
whose content switches, with a stand-in similarity), the plot, and one end-to-end run on a tiny random model."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from heartmula.errors import HeartMuLaError
from heartmula.lm.generation import FRAME_RATE
from heartmula.stream import read_control_script
from heartmula.stream.style_demo import (
    FROM_TAGS,
    TO_TAGS,
    control_script,
    plot_curves,
    similarity_curves,
    summarize,
    window_spans,
)

ROOT = Path(__file__).resolve().parents[2]
RATE = 8000


def load_demo():
    spec = importlib.util.spec_from_file_location("stream_style_demo", ROOT / "bench" / "stream_style_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_tag_sets_are_corpus_tags():
    from heartmula.clap import known_tags

    for tags in (FROM_TAGS, TO_TAGS):
        assert set(tags.split(",")) <= set(known_tags())
    assert not set(FROM_TAGS.split(",")) & set(TO_TAGS.split(","))


def script_changes(tmp_path, text):
    path = tmp_path / "controls.txt"
    path.write_text(text, encoding="utf-8")
    return read_control_script(path)


def test_sudden_switch_script(tmp_path):
    changes = script_changes(tmp_path, control_script("ballad,piano", "electronic,drums", switch_at=30.0))
    assert [c.frame for c in changes] == [round(30 * FRAME_RATE)]
    assert changes[0].changes == {"prompts": (("electronic,drums", 1.0),)}


def test_crossfade_script_moves_the_weight_from_a_to_b(tmp_path):
    changes = script_changes(tmp_path, control_script("ballad,piano", "synth bass,drums", 10.0, crossfade=2.0))
    frames = [c.frame for c in changes]
    assert frames[0] == round(10 * FRAME_RATE) and frames[-1] == round(12 * FRAME_RATE)
    assert frames == sorted(set(frames)) and len(frames) == 5  # 4 steps of 0.5 s, then B alone
    weights_b = [dict(c.changes["prompts"]).get("synth bass,drums") for c in changes]
    weights_a = [dict(c.changes["prompts"]).get("ballad,piano", 0.0) for c in changes]
    assert weights_b == sorted(weights_b) and weights_b[0] < 0.5 and weights_b[-1] == 1.0
    assert weights_a == sorted(weights_a, reverse=True) and weights_a[-1] == 0.0
    assert changes[-1].changes["prompts"] == (("synth bass,drums", 1.0),)  # A leaves the batch at the end


@pytest.mark.parametrize("tags,switch_at,crossfade,message", [
    ("piano", 10, 0, "the same"),
    ("piano:0.5", 10, 0, "plain comma-separated"),
    ("drums", 0, 0, "time > 0"),
    ("drums", 10, -1, "crossfade >= 0"),
])
def test_control_script_rejects_bad_input(tags, switch_at, crossfade, message):
    with pytest.raises(HeartMuLaError, match=message):
        control_script("piano", tags, switch_at, crossfade)


def test_window_spans():
    assert window_spans(10.0, 5.0, 1.0) == [(float(k), k + 5.0) for k in range(6)]
    assert window_spans(10.5, 5.0, 2.0) == [(0.0, 5.0), (2.0, 7.0), (4.0, 9.0)]
    assert window_spans(3.0, 5.0, 1.0) == [(0.0, 3.0)]
    with pytest.raises(HeartMuLaError):
        window_spans(10.0, 5.0, 0.0)


def switching_audio(first_hz: float, second_hz: float, seconds: float = 16.0, switch_at: float = 8.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return np.where(t < switch_at, np.sin(2 * np.pi * first_hz * t), np.sin(2 * np.pi * second_hz * t))[None]


def tone_score(audio, rate, tags):
    """Stand-in for CLAP: the share of the window's energy near the frequency named by the tags."""
    spectrum = np.abs(np.fft.rfft(audio[0])) ** 2
    freqs = np.fft.rfftfreq(audio.shape[1], 1 / rate)
    return float(spectrum[np.abs(freqs - float(tags)) < 20].sum() / spectrum.sum())


def test_analysis_finds_the_switch_in_synthetic_audio(tmp_path):
    tags = {"A": "440", "B": "1000"}
    result = similarity_curves(switching_audio(440, 1000), RATE, tags, window=2.0, hop=0.5, score=tone_score)
    assert len(result["time"]) == len(result["curves"]["A"]) == 29 and result["time"][0] == 1.0
    summary = summarize(result, switch_at=8.0)
    before, after = summary["before"], summary["after"]
    assert before["windows"] == after["windows"] == 13  # windows straddling the switch belong to neither side
    assert before["sim_A"] > 0.9 and before["sim_B"] < 0.1 and after["sim_B"] > 0.9 and after["sim_A"] < 0.1
    assert summary["rise"] == pytest.approx(after["B_minus_A"] - before["B_minus_A"]) and summary["rise"] > 1.6
    assert summary["rose"] is True
    assert summary["spread"] < 0.05  # pure tones: no spread, so no ratio either
    assert 7.0 <= summary["crossed_at"] <= 9.0
    png = plot_curves(result, summary, tmp_path / "sim.png", labels={"A": "440 Hz", "B": "1000 Hz"})
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the other way round (the audio moves from B to A): the summary must say B - A did not rise
    reverse = summarize(similarity_curves(switching_audio(1000, 440), RATE, tags, 2.0, 0.5, tone_score), 8.0)
    assert reverse["rose"] is False and reverse["rise"] < -1.6 and reverse["crossed_at"] is None


def test_summary_of_a_crossfade_leaves_out_the_fade():
    result = similarity_curves(switching_audio(440, 1000), RATE, {"A": "440", "B": "1000"}, 2.0, 1.0, tone_score)
    summary = summarize(result, switch_at=6.0, switch_end=10.0)
    assert summary["before"]["windows"] == 5 and summary["after"]["windows"] == 5
    assert (summary["switch_at"], summary["switch_end"]) == (6.0, 10.0)


def test_demo_end_to_end_on_a_tiny_random_model(tmp_path, capsys):
    demo = load_demo()
    out = tmp_path / "demo"
    code = demo.main(["--out", str(out), "--random-model", "--seconds", "5", "--switch-at", "2", "--crossfade", "1",
                      "--window", "2", "--hop", "1", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "3 control changes applied" in captured.err  # 2 fade steps, then B alone, as scripted
    assert "B-A rose by" in captured.out
    changes = read_control_script(out / "controls.txt")
    assert [c.frame for c in changes] == [25, 31, 38]
    report = json.loads((out / "similarity.json").read_text(encoding="utf-8"))
    assert report["song"]["seconds"] == pytest.approx(5.0, abs=0.2)
    assert report["tags"] == {"A": FROM_TAGS, "B": TO_TAGS}
    assert len(report["windows"]["time"]) == 4 and report["summary"]["after"]["windows"] == 1
    for value in report["windows"]["curves"]["A"] + report["windows"]["curves"]["B"]:
        assert -1.0 <= value <= 1.0
    assert (out / "similarity.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "song.wav").stat().st_size > 0


def test_demo_rejects_a_switch_without_room_for_windows(tmp_path, capsys):
    demo = load_demo()
    assert demo.main(["--out", str(tmp_path), "--random-model", "--seconds", "10", "--switch-at", "8"]) == 2
    assert "at least one window before the switch and one after it" in capsys.readouterr().err
    assert not (tmp_path / "song.wav").exists()
