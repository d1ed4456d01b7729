"""HeartTranscriptor: lyrics transcription with timestamps (Whisper on CTranslate2 or transformers).

    from heartmula.transcribe import transcribe
    song = transcribe("song.mp3", language="en")
    for line in song.segments: print(line.start, line.end, line.text, [(w.text, w.start) for w in line.words])
"""

from heartmula.transcribe.backends import DECODING_PRESETS, UPSTREAM_DECODING, DecodingOptions
from heartmula.transcribe.models import DEFAULT_MODEL, locate_model
from heartmula.transcribe.pipeline import TranscribeConfig, Transcriber, expand_audio_paths, transcribe
from heartmula.transcribe.result import FORMATS, Segment, Transcript, Word, render

__all__ = [
    "DECODING_PRESETS", "DEFAULT_MODEL", "FORMATS", "UPSTREAM_DECODING", "DecodingOptions", "Segment",
    "TranscribeConfig", "Transcriber", "Transcript", "Word", "expand_audio_paths", "locate_model", "render",
    "transcribe",
]
