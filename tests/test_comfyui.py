import importlib.util
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from heartmula.codec.pretrained import write_random_codec
from heartmula.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from heartmula.lm.pretrained import write_random_root

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_root")
    write_random_root(root, "tiny", seed=0)
    write_random_codec(root / "HeartCodec-oss", "tiny", seed=0)
    (pipe,) = NODE_CLASS_MAPPINGS["HeartMuLaLoadPipeline"]().load(str(root), "auto", "auto")
    return pipe


def test_every_node_declares_what_comfyui_reads():
    assert set(NODE_CLASS_MAPPINGS) == set(NODE_DISPLAY_NAME_MAPPINGS)
    for node in NODE_CLASS_MAPPINGS.values():
        inputs = node.INPUT_TYPES()["required"]
        assert inputs and len(node.RETURN_TYPES) == len(node.RETURN_NAMES)
        assert callable(getattr(node(), node.FUNCTION)) and node.CATEGORY.startswith("audio")


def test_the_custom_node_folder_exports_the_mappings():
    spec = importlib.util.spec_from_file_location("heartmula_custom_nodes", REPO / "comfyui" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NODE_CLASS_MAPPINGS is NODE_CLASS_MAPPINGS


def test_generate_returns_comfyui_audio_equal_to_the_pipelines_song(pipeline):
    node = NODE_CLASS_MAPPINGS["HeartMuLaGenerateSong"]()
    (audio,) = node.generate(pipeline, "[verse]\nla la", "pop", 1.0, 3, 1.0, 50, 1.5)
    waveform = audio["waveform"]
    assert isinstance(waveform, torch.Tensor) and waveform.dtype == torch.float32 and waveform.ndim == 3
    assert waveform.shape[0] == 1 and audio["sample_rate"] == pipeline.sample_rate
    song = pipeline("[verse]\nla la", tags="pop", duration=1.0, seed=3)
    assert np.array_equal(waveform[0].numpy(), song.audio)


def test_tag_and_transcribe_read_comfyui_audio(tmp_path):
    wav = tmp_path / "speech.wav"
    text = "the weather is nice today and the sun is shining"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(wav), text], check=True)
    speech, rate = sf.read(str(wav), dtype="float32")
    audio = {"waveform": torch.from_numpy(np.stack([speech, speech]))[None], "sample_rate": rate}
    (tags,) = NODE_CLASS_MAPPINGS["HeartMuLaTagSong"]().tag(audio, 50, 0.0)
    assert len(tags.split(",")) == 50 and all(tag.strip() for tag in tags.split(","))
    (lyrics,) = NODE_CLASS_MAPPINGS["HeartMuLaTranscribeLyrics"]().transcribe(audio, "en", "")
    assert "sun" in lyrics.lower()
