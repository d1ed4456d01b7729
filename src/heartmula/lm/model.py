"""The HeartMuLa network with the official tensor names and shapes (a Sesame-CSM style global/local model).

A prompt row holds K audio codebook columns and one text column (last). Its embedding is the masked sum of the
K+1 column embeddings; codebook k reads row `k * audio_vocab_size + code` of `audio_embeddings`. The backbone
predicts codebook 0 from the last row; the local decoder then predicts codebooks 1..K-1 of the same frame.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from heartmula.checkpoint import check_model_folder, load_state_dict, save_state_dict
from heartmula.errors import HeartMuLaError
from heartmula.lm.config import HeartMuLaConfig
from heartmula.nn.layers import Linear, linear
from heartmula.nn.quantized import QuantizedLinear
from heartmula.nn.transformer import Transformer

CONFIG_FILE = "config.json"


class HeartMuLa(nn.Module):
    def __init__(self, config: HeartMuLaConfig):
        super().__init__()
        self.config = config
        backbone, decoder = config.backbone, config.decoder
        dim, decoder_dim = backbone.embed_dim, decoder.embed_dim
        vocab, codebooks = config.audio_vocab_size, config.audio_num_codebooks
        self.backbone = Transformer(backbone)
        self.decoder = Transformer(decoder)
        self.text_embeddings = nn.Embedding(config.text_vocab_size, dim)
        self.audio_embeddings = nn.Embedding(vocab * codebooks, dim)
        self.unconditional_text_embedding = nn.Embedding(1, dim)  # the CFG "null" text
        self.projection = Linear(dim, decoder_dim, bias=False)
        self.codebook0_head = Linear(dim, vocab, bias=False)
        self.audio_head = nn.Parameter(torch.empty(codebooks - 1, decoder_dim, vocab))
        self.muq_linear = nn.Linear(config.muq_dim, dim)
        self.audio_head_int8: nn.ModuleList | None = None  # set by heartmula.nn.quant.quantize_int8
        # audio_head as one [(K-1) V, decoder_dim] int8 / int4 layer, set by heartmula.lm.quantized
        self.audio_head_quantized: QuantizedLinear | None = None

    @property
    def num_codebooks(self) -> int:
        return self.config.audio_num_codebooks

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype (that of the norms, which stay unquantised)."""
        return self.backbone.norm.scale.dtype

    @property
    def device(self) -> torch.device:
        return self.backbone.norm.scale.device

    # --- embeddings -------------------------------------------------------------------------------------------
    def unconditional_embedding(self) -> torch.Tensor:
        return self.unconditional_text_embedding.weight[0]

    def embed_audio(self, codebook: int, codes: torch.Tensor) -> torch.Tensor:
        return self.audio_embeddings(codes + codebook * self.config.audio_vocab_size)

    def embed_rows(self, tokens: torch.Tensor, mask: torch.Tensor, unconditional: torch.Tensor | None) -> torch.Tensor:
        """tokens, mask [b, s, K+1] -> [b, s, dim]: masked sum of the column embeddings.

        `unconditional` [b] bool marks CFG rows whose text column embeds as the null text everywhere.
        """
        b, s, _ = tokens.shape
        text = self.text_embeddings(tokens[:, :, -1])
        if unconditional is not None:
            text = torch.where(unconditional.view(b, 1, 1), self.unconditional_embedding(), text)
        offsets = self.config.audio_vocab_size * torch.arange(self.num_codebooks, device=tokens.device)
        audio = self.audio_embeddings((tokens[:, :, :-1] + offsets).reshape(-1)).reshape(b, s, self.num_codebooks, -1)
        columns = torch.cat([audio, text.unsqueeze(-2)], dim=-2)
        return (columns * mask.unsqueeze(-1)).sum(dim=2, dtype=columns.dtype)

    def embed_prompt_rows(self, tokens: torch.Tensor, mask: torch.Tensor, unconditional: torch.Tensor | None,
                          references: list[torch.Tensor | None], slots: list[int]) -> torch.Tensor:
        """`embed_rows` with each row's reference-audio slot filled, as training and generation both need it:
        muq_linear(reference) (of zeros where the reference is None, as upstream) in conditional rows, the null text
        in unconditional ones. references: one [muq_dim] or None per row; slots: the slot's index in each row."""
        hidden = self.embed_rows(tokens, mask, unconditional)
        vectors = torch.stack([
            torch.zeros(self.config.muq_dim) if r is None else torch.as_tensor(r, dtype=torch.float32).reshape(-1)
            for r in references
        ]).to(hidden.device, self.dtype)
        slot_values = self.muq_linear(vectors)
        if unconditional is not None:
            slot_values = torch.where(unconditional[:, None], self.unconditional_embedding(), slot_values)
        index = (torch.arange(len(references), device=hidden.device), torch.tensor(slots, device=hidden.device))
        return hidden.index_put(index, slot_values.to(hidden.dtype))

    def codebook_logits(self, codebook: int, decoder_hidden: torch.Tensor) -> torch.Tensor:
        """Logits of codebook >= 1 from the local decoder's last hidden state [b, decoder_dim]."""
        if self.audio_head_int8 is not None:
            return self.audio_head_int8[codebook - 1](decoder_hidden)
        if self.audio_head_quantized is not None:
            vocab = self.config.audio_vocab_size
            return self.audio_head_quantized.row_block((codebook - 1) * vocab, codebook * vocab)(decoder_hidden)
        return linear(decoder_hidden, self.audio_head[codebook - 1].t())

    def use_row_major_heads(self) -> None:
        """Store audio_head as [.., vocab, dim] in memory (same values, same shape and name).

        `h @ audio_head[i]` then runs as a plain linear layer, which reads the weights about twice as fast on a
        CPU as a matmul against a [dim, vocab] matrix.
        """
        self.audio_head.data = self.audio_head.data.transpose(1, 2).contiguous().transpose(1, 2)

    # --- weights ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, seed: int = 0, std: float = 0.02) -> HeartMuLa:
        """Fresh random weights (training from scratch, test checkpoints)."""
        generator = torch.Generator().manual_seed(seed)
        for name, param in self.named_parameters():
            if name.endswith(".scale"):
                param.fill_(1.0)
            elif name == "muq_linear.bias":
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
        return self

    @classmethod
    def expected_shapes(cls, config: HeartMuLaConfig) -> dict[str, tuple[int, ...]]:
        with torch.device("meta"):
            model = cls(config)
        return {name: tuple(t.shape) for name, t in model.state_dict().items()}

    @classmethod
    def check_folder(cls, folder: str | os.PathLike) -> HeartMuLa:
        """Check a model folder without reading any weights: config.json, then every tensor's name, shape and
        dtype against the model it describes. Returns that model on the meta device."""
        return check_model_folder(folder, "HeartMuLa model", HeartMuLaConfig.from_file, cls, lambda m: m.state_dict())

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> HeartMuLa:
        model = cls.check_folder(folder)
        state = load_state_dict(folder, dtype=dtype, device=device)
        model.load_state_dict(state, assign=True, strict=True)
        model.use_row_major_heads()
        return model.eval()

    def save_pretrained(self, folder: str | os.PathLike, max_shard_bytes: int | None = None) -> None:
        if self.audio_head_quantized is not None:
            raise HeartMuLaError("this model holds int8 / int4 weights: save it with heartmula.lm.quantized."
                                 "save_quantized (`heartmula model quantize`)")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_state_dict(self.state_dict(), folder, max_shard_bytes=max_shard_bytes)
        self.config.save(folder / CONFIG_FILE)
