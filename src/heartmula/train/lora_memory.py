"""Trainable parameters and training memory of LoRA on a HeartMuLa geometry, worked out on the meta device.

The model and its peft adapters are built on the meta device (shapes, no storage), so the 3B release's numbers
come out in seconds on any machine. The memory estimate counts what a training step keeps on the accelerator:
    weights          base parameters in the training dtype (bfloat16: 2 bytes each), frozen
    adapter          LoRA parameters in float32 + their gradients + AdamW's two moments: 16 bytes each
    activations      per backbone layer what autograd keeps for the backward pass; with gradient checkpointing
                     only each layer's input, plus one layer's full set while it is recomputed
    logits           codebook-0 logits and their softmax in float32 for every row, and the local decoder's
                     codebook logits for the frames it trains on
Attention is counted as a fused kernel (scaled_dot_product_attention on a GPU keeps no [L, L] matrix).
"""

from __future__ import annotations

import torch

from heartmula.lm.config import HeartMuLaConfig
from heartmula.lm.lora import DEFAULT_PARTS, DEFAULT_TARGETS, target_pattern
from heartmula.lm.model import HeartMuLa
from heartmula.nn.transformer import TransformerConfig

GB = 1e9


def lora_on_meta(config: HeartMuLaConfig, rank: int, targets=DEFAULT_TARGETS, parts=DEFAULT_PARTS):
    """The peft LoRA model of `config` on the meta device."""
    from peft import LoraConfig, get_peft_model

    with torch.device("meta"):
        model = HeartMuLa(config)
        model.requires_grad_(False)
        return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=target_pattern(targets,
                                                                                                          parts)))


def _layer_activation_values(c: TransformerConfig, rows: int) -> int:
    """Values autograd keeps for one layer's backward: the two norms' outputs, q, k, v, the attention output and
    its projection, the residual sum, and the SwiGLU gate, up, activated gate and product."""
    kv = c.num_kv_heads * c.dim_per_head
    return rows * (6 * c.embed_dim + 2 * kv + 4 * c.intermediate_dim)


def lora_memory_estimate(config: HeartMuLaConfig, rank: int = 16, batch_size: int = 1, context: int = 2048,
                         decoder_fraction: float = 0.5, weight_bytes: int = 2, targets=DEFAULT_TARGETS,
                         parts=DEFAULT_PARTS) -> dict:
    """Parameter counts (from the meta model) and the bytes of one training step, with and without checkpointing."""
    model = lora_on_meta(config, rank, targets, parts)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    modules = sum(1 for name, _ in model.named_modules() if name.endswith(".lora_A"))
    backbone, decoder = config.backbone, config.decoder
    rows = batch_size * context
    frames = int(rows * decoder_fraction)
    k = config.audio_num_codebooks
    layer_full = _layer_activation_values(backbone, rows) * weight_bytes
    decoder_full = decoder.num_layers * _layer_activation_values(decoder, frames * k) * weight_bytes
    checkpointed = (backbone.num_layers * rows * backbone.embed_dim * weight_bytes + layer_full
                    + decoder.num_layers * frames * k * decoder.embed_dim * weight_bytes)
    everything = backbone.num_layers * layer_full + decoder_full
    logits = 2 * 4 * (rows + frames * (k - 1)) * config.audio_vocab_size
    weights, adapter = base * weight_bytes, trainable * 16
    fixed = weights + adapter + logits
    return {
        "trainable_parameters": trainable, "base_parameters": base, "lora_modules": modules, "rank": rank,
        "batch_size": batch_size, "context": context, "weight_bytes": weight_bytes,
        "weights_gb": weights / GB, "adapter_and_optimizer_gb": adapter / GB, "logits_gb": logits / GB,
        "activations_checkpointed_gb": checkpointed / GB, "activations_full_gb": everything / GB,
        "total_gb": (fixed + checkpointed) / GB, "without_checkpointing_gb": (fixed + everything) / GB,
    }
