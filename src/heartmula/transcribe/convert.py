"""CTranslate2 Whisper -> Hugging Face transformers Whisper, so the embedded (CTranslate2-only) weights can be
fine-tuned in PyTorch and run by the transformers backend.

CTranslate2's model.bin (format version 6) is a header, then named tensors, then aliases:
    uint32 version | str spec | uint32 spec revision | uint32 count |
    count x (str name | uint8 rank | uint32 dims[rank] | uint8 dtype | uint32 nbytes | bytes) |
    uint32 alias count | alias count x (str alias | str target)
where str is a uint16 length (including a trailing NUL) and the bytes. Whisper stores fused projections:
self-attention q/k/v in `self_attention/linear_0` (k has a zero bias, which transformers omits), cross-attention
k/v in `attention/linear_1`, and the output projection tied to the token embedding.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import numpy as np
import torch

from heartmula.errors import HeartMuLaError
from heartmula.extras import require
from heartmula.files import atomic_output

# CTranslate2 DataType enum values -> numpy dtypes (bfloat16 is read as raw uint16 and widened below).
CONVERTED_MARKER = "converted-from-ctranslate2.json"
CONVERTER_VERSION = 2  # bump when the output changes, so cached conversions are redone
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}


def read_ct2_model(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All named tensors of a CTranslate2 model.bin (aliases resolved), as float32/int arrays."""
    path = Path(path)
    with open(path, "rb") as f:
        def read(fmt: str):
            size = struct.calcsize(fmt)
            chunk = f.read(size)
            if len(chunk) != size:
                raise HeartMuLaError(f"{path} ends early: the CTranslate2 model file is truncated")
            return struct.unpack("<" + fmt, chunk)[0]

        def read_str() -> str:
            return f.read(read("H")).rstrip(b"\0").decode()

        version = read("I")
        if version < 5:
            raise HeartMuLaError(f"{path}: CTranslate2 model format {version} is too old (need 5 or newer)")
        spec = read_str()
        read("I")  # spec revision
        if spec != "WhisperSpec":
            raise HeartMuLaError(f"{path} holds a {spec}, not a Whisper model")
        tensors: dict[str, np.ndarray] = {}
        for _ in range(read("I")):
            name = read_str()
            dims = [read("I") for _ in range(read("B"))]
            dtype_id = read("B")
            nbytes = read("I")
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise HeartMuLaError(f"{path} ends inside tensor {name}: the CTranslate2 model file is truncated")
            raw = np.frombuffer(data, dtype=_CT2_DTYPES[dtype_id]).reshape(dims)
            if dtype_id == 5:  # bfloat16: the high half of a float32
                raw = (raw.astype(np.uint32) << 16).view(np.float32)
            tensors[name] = raw.astype(np.float32) if raw.dtype in (np.float16, np.float32) else raw
        for _ in range(read("I")):
            alias, target = read_str(), read_str()
            tensors[alias] = tensors[target]
    return tensors


def _layer_count(t: dict, side: str) -> int:
    return len({m[1] for k in t if (m := re.match(rf"{side}/layer_(\d+)/", k))})


def _attention(prefix_ct2: str, prefix_hf: str, t: dict, out: dict, fused_qkv: bool) -> None:
    w0, b0 = t[f"{prefix_ct2}/linear_0/weight"], t[f"{prefix_ct2}/linear_0/bias"]
    if fused_qkv:
        (wq, wk, wv), (bq, _, bv) = np.split(w0, 3), np.split(b0, 3)
        out_linear = "linear_1"
    else:  # cross-attention: q alone in linear_0, k/v fused in linear_1
        wq, bq = w0, b0
        wk, wv = np.split(t[f"{prefix_ct2}/linear_1/weight"], 2)
        bv = np.split(t[f"{prefix_ct2}/linear_1/bias"], 2)[1]
        out_linear = "linear_2"
    out[f"{prefix_hf}.q_proj.weight"], out[f"{prefix_hf}.q_proj.bias"] = wq, bq
    out[f"{prefix_hf}.k_proj.weight"] = wk
    out[f"{prefix_hf}.v_proj.weight"], out[f"{prefix_hf}.v_proj.bias"] = wv, bv
    out[f"{prefix_hf}.out_proj.weight"] = t[f"{prefix_ct2}/{out_linear}/weight"]
    out[f"{prefix_hf}.out_proj.bias"] = t[f"{prefix_ct2}/{out_linear}/bias"]


def _norm(prefix_ct2: str, prefix_hf: str, t: dict, out: dict) -> None:
    out[f"{prefix_hf}.weight"], out[f"{prefix_hf}.bias"] = t[f"{prefix_ct2}/gamma"], t[f"{prefix_ct2}/beta"]


def _ffn(prefix_ct2: str, prefix_hf: str, t: dict, out: dict) -> None:
    for ct2_name, hf_name in (("linear_0", "fc1"), ("linear_1", "fc2")):
        out[f"{prefix_hf}.{hf_name}.weight"] = t[f"{prefix_ct2}/{ct2_name}/weight"]
        out[f"{prefix_hf}.{hf_name}.bias"] = t[f"{prefix_ct2}/{ct2_name}/bias"]


def hf_state_dict_from_ct2(t: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    out: dict[str, np.ndarray] = {}
    for side in ("encoder", "decoder"):
        for i in range(_layer_count(t, side)):
            ct2, hf = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            _attention(f"{ct2}/self_attention", f"{hf}.self_attn", t, out, fused_qkv=True)
            _norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm", t, out)
            _ffn(f"{ct2}/ffn", hf, t, out)
            _norm(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm", t, out)
            if side == "decoder":
                _attention(f"{ct2}/attention", f"{hf}.encoder_attn", t, out, fused_qkv=False)
                _norm(f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm", t, out)
        _norm(f"{side}/layer_norm", f"model.{side}.layer_norm", t, out)
        out[f"model.{side}.embed_positions.weight"] = t[f"{side}/position_encodings/encodings"]
    for conv in ("conv1", "conv2"):
        out[f"model.encoder.{conv}.weight"] = t[f"encoder/{conv}/weight"]
        out[f"model.encoder.{conv}.bias"] = t[f"encoder/{conv}/bias"]
    out["model.decoder.embed_tokens.weight"] = t["decoder/embeddings/weight"]
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in out.items()}


def _whisper_config(t: dict[str, np.ndarray], ct2_config: dict, tokenizer) -> dict:
    vocab, d_model = t["decoder/embeddings/weight"].shape
    encoder_layers, decoder_layers = _layer_count(t, "encoder"), _layer_count(t, "decoder")
    token = tokenizer.convert_tokens_to_ids
    eot = token("<|endoftext|>")
    return dict(
        vocab_size=int(vocab), num_mel_bins=int(t["encoder/conv1/weight"].shape[1]), d_model=int(d_model),
        encoder_layers=encoder_layers, decoder_layers=decoder_layers,
        encoder_attention_heads=int(t["encoder/num_heads"]), decoder_attention_heads=int(t["decoder/num_heads"]),
        encoder_ffn_dim=int(t["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(t["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(t["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(t["decoder/position_encodings/encodings"].shape[0]),
        pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=token("<|startoftranscript|>"),
        tie_word_embeddings=True, scale_embedding=False,
        # Suppression lists belong in the generation config; WhisperConfig's own defaults would override them.
        suppress_tokens=None, begin_suppress_tokens=None,
    )


def _generation_config(whisper_config: dict, ct2_config: dict, tokenizer):
    """A filled generation config: without lang_to_id / task_to_id / no_timestamps_token_id transformers'
    Whisper generate() cannot force a language or produce timestamps, and babbles."""
    from transformers import GenerationConfig

    token = tokenizer.convert_tokens_to_ids
    lang_ids = list(ct2_config.get("lang_ids", []))
    # As in Whisper itself: only the multilingual vocabulary has 51865+ entries (English-only models list
    # language ids in their CTranslate2 config too, but cannot use them).
    multilingual = whisper_config["vocab_size"] >= 51865
    fields = dict(
        decoder_start_token_id=whisper_config["decoder_start_token_id"],
        bos_token_id=whisper_config["bos_token_id"], eos_token_id=whisper_config["eos_token_id"],
        pad_token_id=whisper_config["pad_token_id"], max_length=whisper_config["max_target_positions"],
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [])),
        is_multilingual=multilingual,
        no_timestamps_token_id=token("<|notimestamps|>"),
        prev_sot_token_id=token("<|startofprev|>"),
        max_initial_timestamp_index=50,
        alignment_heads=[list(h) for h in ct2_config.get("alignment_heads", [])],
    )
    if multilingual:
        # Only then: transformers treats the mere presence of lang_to_id as "detect a language", and would put
        # a bogus language token into an English-only model's prompt.
        fields["lang_to_id"] = {tokenizer.convert_ids_to_tokens(i): i for i in lang_ids}
        fields["task_to_id"] = {"transcribe": token("<|transcribe|>"), "translate": token("<|translate|>")}
    return GenerationConfig(**fields)


def is_current_conversion(folder: Path) -> bool:
    marker = Path(folder) / CONVERTED_MARKER
    try:
        return json.loads(marker.read_text()).get("converter_version") == CONVERTER_VERSION
    except (OSError, ValueError):
        return False


def convert_ct2_to_transformers(ct2_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write a transformers Whisper folder (safetensors, config, generation config, tokenizer, feature
    extractor) from a CTranslate2 Whisper folder. Returns out_dir."""
    require("transcribe", "transformers")
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizerFast,
    )

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    for name in ("model.bin", "config.json", "tokenizer.json"):
        if not (ct2_dir / name).is_file():
            raise HeartMuLaError(f"{ct2_dir} is not a CTranslate2 Whisper folder: {name} is missing")
    tensors = read_ct2_model(ct2_dir / "model.bin")
    ct2_config = json.loads((ct2_dir / "config.json").read_text())
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(ct2_dir / "tokenizer.json"))
    config_dict = _whisper_config(tensors, ct2_config, tokenizer)
    model = WhisperForConditionalGeneration(WhisperConfig(**config_dict))
    missing, unexpected = model.load_state_dict(hf_state_dict_from_ct2(tensors), strict=False)
    # proj_out is tied to embed_tokens, so its absence is expected; anything else means a layout mismatch.
    if unexpected or [k for k in missing if k != "proj_out.weight"]:
        raise HeartMuLaError(f"{ct2_dir}: unexpected Whisper layout (missing {missing}, unexpected {unexpected})")
    model.tie_weights()
    model.generation_config = _generation_config(config_dict, ct2_config, tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The marker is renamed into place last: a folder without it is an interrupted conversion.
    with atomic_output(out_dir / CONVERTED_MARKER) as tmp_marker:
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
        WhisperFeatureExtractor(feature_size=config_dict["num_mel_bins"]).save_pretrained(out_dir)
        tmp_marker.write_text(json.dumps({"source": str(ct2_dir), "converter_version": CONVERTER_VERSION}))
    return out_dir


def export_ctranslate2(folder: str | os.PathLike, out_dir: str | os.PathLike, quantization: str = "int8") -> Path:
    """A transformers Whisper folder (e.g. a fine-tuned one) -> a CTranslate2 folder that faster-whisper and
    `heartmula transcribe --model OUT` run; int8 weights by default. Written beside OUT, then renamed into place."""
    require("transcribe", "ctranslate2", feature="the CTranslate2 export")
    from ctranslate2.converters import TransformersConverter

    folder, out_dir = Path(folder), Path(out_dir)
    if not (folder / "config.json").is_file():
        raise HeartMuLaError(f"{folder} is not a transformers Whisper folder (no config.json)")
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    copy = [name for name in ("tokenizer.json", "preprocessor_config.json") if (folder / name).is_file()]
    try:
        TransformersConverter(str(folder), copy_files=copy).convert(str(partial), quantization=quantization,
                                                                    force=True)
    except (ValueError, OSError, RuntimeError) as exc:
        raise HeartMuLaError(f"cannot export {folder} to CTranslate2: {exc}") from None
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    os.replace(partial, out_dir)
    return out_dir
