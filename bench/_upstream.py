"""Bench-only bridge to an upstream heartlib checkout (never imported by the package or the tests).

Run the bench scripts with a Python that has upstream's dependencies (torchtune 0.4, transformers 4.57) and pass
`--heartlib-src PATH/TO/heartlib` (the folder holding `src/heartlib`). torchaudio is only used upstream to save
audio files, so a stand-in module is registered when it is not installed.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import torch


def import_upstream(heartlib_src: str | Path):
    src = Path(heartlib_src)
    src = src / "src" if (src / "src" / "heartlib").is_dir() else src
    if not (src / "heartlib").is_dir():
        raise SystemExit(f"{heartlib_src} does not contain heartlib sources")
    if "torchaudio" not in sys.modules:
        try:
            import torchaudio  # noqa: F401
        except ImportError:
            import transformers  # noqa: F401 - let it probe for torchaudio before the stand-in exists

            sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    sys.path.insert(0, str(src))
    modeling = importlib.import_module("heartlib.heartmula.modeling_heartmula")
    configuration = importlib.import_module("heartlib.heartmula.configuration_heartmula")
    pipeline = importlib.import_module("heartlib.pipelines.music_generation")
    return modeling, configuration, pipeline


def register_flavor(modeling, name: str, sizes: dict) -> None:
    """Make upstream build a transformer of `sizes` for flavor `name` (upstream only knows four flavor names)."""
    from torchtune.models import llama3_2

    def build():
        return llama3_2.llama3_2(
            vocab_size=128_256, num_layers=sizes["num_layers"], num_heads=sizes["num_heads"],
            num_kv_heads=sizes["num_kv_heads"], embed_dim=sizes["embed_dim"], max_seq_len=sizes["max_seq_len"],
            intermediate_dim=sizes["intermediate_dim"], attn_dropout=0.0, norm_eps=sizes["norm_eps"],
            rope_base=sizes["rope_base"], scale_factor=sizes["scale_factor"],
        )

    modeling.FLAVORS[name] = build


def build_upstream_checkpoint(modeling, configuration, root: Path, backbone: dict, decoder: dict,
                              text_vocab: int, seed: int, std: float = 0.02, version: str = "3B") -> Path:
    """Random-weight HeartMuLa saved by upstream's own `save_pretrained` (the official on-disk format)."""
    register_flavor(modeling, "bench-backbone", backbone)
    register_flavor(modeling, "bench-decoder", decoder)
    config = configuration.HeartMuLaConfig(
        backbone_flavor="bench-backbone", decoder_flavor="bench-decoder", text_vocab_size=text_vocab,
        audio_vocab_size=8197, audio_num_codebooks=8, muq_dim=512,
        backbone_config=backbone, decoder_config=decoder,
    )
    torch.manual_seed(seed)
    model = modeling.HeartMuLa(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".scale"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, std)
    folder = root / f"HeartMuLa-oss-{version}"
    model.save_pretrained(folder)
    return folder


def upstream_pipeline(pipeline_module, model_dir: Path, tokenizer, gen_config_path: Path):
    """An upstream HeartMuLaGenPipeline for the LM part only (the codec is never loaded)."""
    gen_config = pipeline_module.HeartMuLaGenConfig.from_file(str(gen_config_path))
    pipe = pipeline_module.HeartMuLaGenPipeline(
        heartmula_path=str(model_dir), heartcodec_path=None, heartmula_device=torch.device("cpu"),
        heartcodec_device=torch.device("cpu"), heartmula_dtype=torch.float32, heartcodec_dtype=torch.float32,
        lazy_load=True, muq_mulan=None, text_tokenizer=tokenizer, config=gen_config,
    )
    pipe.lazy_load = False  # keep the model loaded between calls (unloading queries CUDA)
    return pipe


def upstream_generate(pipe, tags: str, lyrics: str, max_audio_length_ms: int, topk: int, temperature: float,
                      cfg_scale: float) -> torch.Tensor:
    """Upstream's preprocess + LM loop; returns codes [8, T].

    The model is reloaded for every call: upstream cannot re-create its KV caches for another batch size (a CFG
    run followed by a cfg_scale=1 run fails inside torchtune).
    """
    pipe._mula = None
    inputs = pipe.preprocess({"tags": tags, "lyrics": lyrics}, cfg_scale=cfg_scale)
    with torch.no_grad():
        out = pipe._forward(inputs, max_audio_length_ms=max_audio_length_ms, temperature=temperature, topk=topk,
                            cfg_scale=cfg_scale)
    return out["frames"].cpu()
