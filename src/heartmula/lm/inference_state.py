"""The KV caches of one generation and the bookkeeping of their slots, passed into the model at every call.

Rows are left-padded to the longest prompt: row i's prompt fills slots pads[i]..next_slot-1 of the backbone cache,
and `key_mask` keeps the padding slots out of attention. RoPE positions start at 0 for every row (`next_positions`
holds each row's next one), so padding changes nothing. The local decoder's cache is refilled every frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from heartmula.lm.model import HeartMuLa
from heartmula.nn.transformer import KVCache


@dataclass
class InferenceState:
    backbone: list[KVCache]  # one per backbone layer [rows, kv_heads, capacity, head_dim]
    decoder: list[KVCache]  # one per local-decoder layer, K slots
    pads: list[int]  # padding slots on the left of each row
    next_slot: int  # the backbone cache slot the next step writes
    next_positions: torch.Tensor  # [rows, 1] the RoPE position of each row's next step
    key_mask: torch.Tensor | None = None  # [rows, capacity] True where a row may attend (None: no padding)

    @classmethod
    def allocate(cls, model: HeartMuLa, pads: list[int], capacity: int, next_slot: int,
                 next_positions: torch.Tensor) -> InferenceState:
        rows, dtype, device = len(pads), model.dtype, model.device
        state = cls(model.backbone.new_cache(rows, capacity, dtype, device),
                    model.decoder.new_cache(rows, model.num_codebooks, dtype, device), list(pads), next_slot,
                    next_positions)
        state.rebuild_key_mask()
        return state

    @property
    def capacity(self) -> int:
        return self.backbone[0].capacity

    def keys_until(self, end: int) -> torch.Tensor | None:
        """The key mask of slots 0..end-1 (None: no row is padded)."""
        return None if self.key_mask is None else self.key_mask[:, :end]

    def advance(self) -> None:
        """One step written: every row moves one slot and one position on."""
        self.next_slot += 1
        self.next_positions = self.next_positions + 1

    def rebuild_key_mask(self) -> None:
        self.key_mask = None
        if any(self.pads):
            device = self.next_positions.device
            slot_index = torch.arange(self.capacity, device=device)
            self.key_mask = slot_index[None, :] >= torch.tensor(self.pads, device=device)[:, None]

    def keep_rows(self, keep: list[int], model: HeartMuLa) -> None:
        """Keep the rows `keep` (in that order) and drop the others."""
        index = torch.tensor(keep, device=self.next_positions.device)
        for cache in self.backbone:
            cache.keep_rows(index)
        self.pads = [self.pads[i] for i in keep]
        self.next_positions = self.next_positions[index]
        self.rebuild_key_mask()
        self.decoder = model.decoder.new_cache(len(keep), model.num_codebooks, model.dtype, model.device)

    def append_row(self, row_cache: list[KVCache], length: int, model: HeartMuLa) -> None:
        """Add a row whose `length` slots of K/V (prompt and frames so far) are in `row_cache`, left-padded like the
        others; the cache grows to the left if the new row is longer than the slots filled so far."""
        shift = max(0, length - self.next_slot)  # slots to add on the left so the new row fits
        pad = self.next_slot + shift - length
        rows, capacity = len(self.pads), self.capacity + shift
        grown = model.backbone.new_cache(rows + 1, capacity, model.dtype, model.device)
        for target, before, new_row in zip(grown, self.backbone, row_cache):
            for name in ("k", "v"):
                getattr(target, name)[:rows, :, shift : shift + self.next_slot] = \
                    getattr(before, name)[:, :, : self.next_slot]
                getattr(target, name)[rows, :, pad : pad + length] = getattr(new_row, name)[0]
        self.backbone = grown
        self.pads = [p + shift for p in self.pads] + [pad]
        self.next_slot += shift
        device = self.next_positions.device
        self.next_positions = torch.cat([self.next_positions, torch.full((1, 1), length, device=device)])
        self.rebuild_key_mask()
        self.decoder = model.decoder.new_cache(rows + 1, model.num_codebooks, model.dtype, model.device)
