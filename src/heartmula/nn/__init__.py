"""Shared building blocks: Llama-style transformer with a GQA-native static KV cache, RoPE, norms, sampling."""
