"""HeartMuLa: a Llama-style backbone over text + audio-frame rows, and a local decoder over the codebooks."""

from heartmula.lm.config import GenerationConfig, HeartMuLaConfig
from heartmula.lm.generation import FrameStep, HeartMuLaGenerator, SamplingParams, SongRequest
from heartmula.lm.model import HeartMuLa

__all__ = [
    "FrameStep",
    "GenerationConfig",
    "HeartMuLa",
    "HeartMuLaConfig",
    "HeartMuLaGenerator",
    "SamplingParams",
    "SongRequest",
]
