"""ComfyUI nodes: load a HeartMuLa pipeline, generate a song, transcribe lyrics, tag a song.

ComfyUI finds them through `NODE_CLASS_MAPPINGS`; the repository's `comfyui/` folder is the custom-node package that
re-exports them (copy or link it to `ComfyUI/custom_nodes/heartmula`, with heartmula installed in ComfyUI's Python).
Audio travels as ComfyUI's AUDIO type: {"waveform": float tensor [batch, channels, samples], "sample_rate": int}.
"""

from __future__ import annotations

import numpy as np

from heartmula.clap import tag_scores
from heartmula.pipeline import HeartMuLaPipeline
from heartmula.transcribe import TranscribeConfig, Transcriber

CATEGORY = "audio/heartmula"
LANGUAGES = ["auto", "en", "zh", "ja", "ko", "es"]


def to_comfy_audio(audio: np.ndarray, sample_rate: int) -> dict:
    import torch

    waveform = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
    return {"waveform": waveform, "sample_rate": sample_rate}


def from_comfy_audio(audio: dict) -> tuple[np.ndarray, int]:
    """The first item of a ComfyUI AUDIO batch as float32 [channels, samples]."""
    waveform = audio["waveform"]
    return waveform[0].detach().float().cpu().numpy(), int(audio["sample_rate"])


class LoadPipeline:
    """The embedded default models (empty path) or an official checkpoint root (`heartmula download`)."""

    CATEGORY, FUNCTION = CATEGORY, "load"
    RETURN_TYPES, RETURN_NAMES = ("HEARTMULA_PIPELINE",), ("pipeline",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_path": ("STRING", {"default": ""}),
                             "device": (["auto", "cpu", "cuda", "mps"],),
                             "dtype": (["auto", "float32", "bfloat16"],)}}

    def load(self, model_path: str, device: str, dtype: str):
        pipe = HeartMuLaPipeline.from_pretrained(model_path.strip() or None, device=device,
                                                 dtype=None if dtype == "auto" else dtype)
        return (pipe,)


class GenerateSong:
    """Lyrics ([verse]/[chorus] sections; empty: instrumental) + style tags -> a song."""

    CATEGORY, FUNCTION = CATEGORY, "generate"
    RETURN_TYPES, RETURN_NAMES = ("AUDIO",), ("audio",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pipeline": ("HEARTMULA_PIPELINE",),
            "lyrics": ("STRING", {"multiline": True, "default": "[verse]\n"}),
            "tags": ("STRING", {"default": "pop,piano,happy"}),
            "duration": ("FLOAT", {"default": 30.0, "min": 1.0, "max": 600.0, "step": 1.0}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1}),
            "temperature": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.05}),
            "top_k": ("INT", {"default": 50, "min": 1, "max": 10_000}),
            "cfg_scale": ("FLOAT", {"default": 1.5, "min": 0.0, "max": 10.0, "step": 0.1}),
        }}

    def generate(self, pipeline, lyrics, tags, duration, seed, temperature, top_k, cfg_scale):
        song = pipeline(lyrics, tags=tags, duration=duration, seed=seed, temperature=temperature, top_k=top_k,
                        cfg_scale=cfg_scale)
        return (to_comfy_audio(song.audio, song.sample_rate),)


class TranscribeLyrics:
    """Sung lyrics as text (HeartTranscriptor: the embedded Whisper base unless a model is named)."""

    CATEGORY, FUNCTION = CATEGORY, "transcribe"
    RETURN_TYPES, RETURN_NAMES = ("STRING",), ("lyrics",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"audio": ("AUDIO",), "language": (LANGUAGES,), "model": ("STRING", {"default": ""})}}

    def transcribe(self, audio, language, model):
        config = TranscribeConfig(model=model.strip() or None, language=None if language == "auto" else language)
        samples, rate = from_comfy_audio(audio)
        return (Transcriber(config).transcribe_array(samples, rate).text,)


class TagSong:
    """Style tags heard in a song by HeartCLAP, most likely first, with their probabilities."""

    CATEGORY, FUNCTION = CATEGORY, "tag"
    RETURN_TYPES, RETURN_NAMES = ("STRING",), ("tags",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"audio": ("AUDIO",), "top": ("INT", {"default": 5, "min": 1, "max": 50}),
                             "min_probability": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05})}}

    def tag(self, audio, top, min_probability):
        samples, rate = from_comfy_audio(audio)
        scores = [(tag, p) for tag, p in tag_scores(samples, sample_rate=rate)[:top] if p >= min_probability]
        return (",".join(tag for tag, _ in scores),)


NODE_CLASS_MAPPINGS = {"HeartMuLaLoadPipeline": LoadPipeline, "HeartMuLaGenerateSong": GenerateSong,
                       "HeartMuLaTranscribeLyrics": TranscribeLyrics, "HeartMuLaTagSong": TagSong}
NODE_DISPLAY_NAME_MAPPINGS = {"HeartMuLaLoadPipeline": "HeartMuLa: load pipeline",
                              "HeartMuLaGenerateSong": "HeartMuLa: generate song",
                              "HeartMuLaTranscribeLyrics": "HeartMuLa: transcribe lyrics",
                              "HeartMuLaTagSong": "HeartMuLa: tag song"}
