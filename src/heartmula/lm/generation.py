"""Frame-by-frame song generation with classifier-free guidance, prompt mixing, seeds and batching.

Semantics follow the upstream release (prompt layout, CFG pair, top-k + temperature + Gumbel-style sampling,
frame 0 from the prefill, stop on EOS). By default these upstream bugs are fixed; `compat=True` brings them back
for A/B parity checks:
- codes the codec cannot decode are never sampled (upstream can emit 8192, and 8194-8196 in frame 0);
- only EOS on codebook 0 ends a song, and frame 0 is never an EOS (upstream never checks frame 0);
- a prompt that would overflow the context raises before any work; empty lyrics make an instrumental song.

Batch layout: every song contributes one conditional row per tag prompt, plus one unconditional row when guided.
Rows of different lengths are left-padded; RoPE positions start at 0 for every row, so padding changes nothing.
Guidance for song s: uncond + cfg * sum_k w_k (cond_k - uncond), which is upstream's formula for one prompt.

Lyrics guidance (not upstream; on when `SamplingParams.lyrics_scale` or the model's gen_config sets a scale): a
sung song also gets a row per tag prompt with the same tags and no lyrics (`bare_k`), and the guidance becomes
    uncond + cfg * sum_k w_k (bare_k - uncond) + lyrics_scale * sum_k w_k (cond_k - bare_k),
which is upstream's formula when lyrics_scale == cfg. A larger lyrics_scale pushes the song further toward what the
lyrics add to the tags (singing, where the tags alone leave it open) without pushing the tags harder.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch

from heartmula.errors import HeartMuLaError
from heartmula.lm.config import GenerationConfig
from heartmula.lm.model import HeartMuLa
from heartmula.nn import native
from heartmula.nn.sampling import exponential_noise, sample_among_top_k, sample_top_k
from heartmula.text import TagPrompt, TextTokenizer, parse_tag_prompts, validate_weights

FRAME_RATE = 12.5  # frames per second; one frame is 80 ms


def frames_for_duration(seconds: float) -> int:
    """Frames generated after the prefill frame for an upstream `max_audio_length_ms` of `seconds`."""
    if not seconds > 0:
        raise HeartMuLaError(f"duration must be > 0 seconds, got {seconds}")
    return int(seconds * 1000) // 80


def min_frames_for(min_seconds: float, max_seconds: float) -> int:
    """Frames a song must have at least for `min_seconds` (capped at what `max_seconds` allows; 0 = no minimum)."""
    if not 0 <= min_seconds < float("inf"):
        raise HeartMuLaError(f"minimum duration must be >= 0 seconds, got {min_seconds}")
    return min(math.ceil(min_seconds * FRAME_RATE - 1e-9), 1 + frames_for_duration(max_seconds))


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 50
    cfg_scale: float = 1.5
    lyrics_scale: float | None = None  # guidance of the lyrics over the same tags alone; None: the model's default

    def validate(self) -> SamplingParams:
        if not (0 <= self.temperature < float("inf")):
            raise HeartMuLaError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise HeartMuLaError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if not (0 <= self.cfg_scale < float("inf")):
            raise HeartMuLaError(f"cfg_scale must be >= 0, got {self.cfg_scale}")
        if self.lyrics_scale is not None and not (0 <= self.lyrics_scale < float("inf")):
            raise HeartMuLaError(f"lyrics_scale must be >= 0, got {self.lyrics_scale}")
        return self


@dataclass
class SongRequest:
    """One song: lyrics (empty = instrumental), tags (a string or weighted prompts), optional reference."""

    lyrics: str = ""
    tags: str | Sequence[TagPrompt | tuple[str, float]] = ""
    reference_embedding: torch.Tensor | None = None  # [muq_dim], e.g. a CLAP audio embedding; zeros upstream
    seed: int | None = None
    audio_codes: torch.Tensor | None = None  # [K, T] codes of audio to continue from (an audio prompt), or None

    def tag_prompts(self) -> list[TagPrompt]:
        if isinstance(self.tags, str):
            return parse_tag_prompts(self.tags)
        prompts = [p if isinstance(p, TagPrompt) else TagPrompt(*p) for p in self.tags]
        validate_weights([p.weight for p in prompts])
        return prompts


@dataclass
class FrameStep:
    """One generated frame for every song of the batch."""

    index: int
    codes: torch.Tensor  # [songs, K] long
    valid: torch.Tensor  # [songs] bool: False once a song has ended (its codes are then meaningless)


@dataclass
class _Row:
    song: int
    tokens: torch.Tensor  # [P, K+1]
    mask: torch.Tensor  # [P, K+1]
    reference_slot: int
    unconditional: bool
    weight: float = 0.0
    tags: str = ""
    without_lyrics: bool = False  # the lyrics-guidance twin of a conditional row: same tags, empty lyrics


class HeartMuLaGenerator:
    """Turns song requests into codec frames with a HeartMuLa model."""

    def __init__(self, model: HeartMuLa, tokenizer: TextTokenizer, gen_config: GenerationConfig):
        self.model = model
        self.tokenizer = tokenizer
        self.gen_config = gen_config

    @property
    def codebook_size(self) -> int:
        """Codes the codec can decode are 0..codebook_size-1; the special ids (EOS, ...) start right after."""
        return self.gen_config.audio_eos_id - 1

    def build_prompt(self, tags: str, lyrics: str) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Rows [tags..., reference slot, lyrics...] -> (tokens [P, K+1], mask [P, K+1], reference slot index)."""
        tag_ids = self.tokenizer.encode_tags(tags)
        lyric_ids = self.tokenizer.encode_lyrics(lyrics)
        length = len(tag_ids) + 1 + len(lyric_ids)
        tokens = torch.zeros(length, self.model.num_codebooks + 1, dtype=torch.long)
        tokens[: len(tag_ids), -1] = torch.tensor(tag_ids)
        tokens[len(tag_ids) + 1 :, -1] = torch.tensor(lyric_ids)
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        mask[:, -1] = True
        return tokens, mask, len(tag_ids)

    def compile(self, backend: str = "inductor") -> None:
        """Compile the backbone and local-decoder passes with torch.compile.

        Shapes are dynamic because attention reads the filled part of the cache, which grows every frame. Worth it
        on GPUs; on a CPU the first call compiles for minutes and the steady-state gain is small (decoding there
        is bound by memory bandwidth), so it is off by default.
        """
        for transformer in (self.model.backbone, self.model.decoder):
            transformer.forward = torch.compile(transformer.forward, dynamic=True, backend=backend)

    def start(
        self,
        songs: Sequence[SongRequest],
        sampling: SamplingParams | None = None,
        max_new_frames: int = 0,
        compat: bool = False,
        guided: bool | None = None,
        min_new_frames: int = 0,
    ) -> GenerationSession:
        """Prefill the prompts and return a session that yields frames; see `GenerationSession`."""
        return GenerationSession(self, list(songs), sampling or SamplingParams(), max_new_frames, compat, guided,
                                 min_new_frames)

    @torch.inference_mode()
    def generate(
        self,
        songs: Sequence[SongRequest],
        sampling: SamplingParams | None = None,
        max_new_frames: int = 0,
        compat: bool = False,
        sync_every: int = 16,
        progress: bool = False,
        min_new_frames: int = 0,
    ) -> list[torch.Tensor]:
        """Codes [K, T] (long, CPU) for each song. T <= 1 + max_new_frames (frame 0 comes from the prefill);
        no song ends before `min_new_frames` frames (end-of-song is not sampled before then)."""
        session = self.start(songs, sampling, max_new_frames, compat, min_new_frames=min_new_frames)
        frames = []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=max_new_frames + 1, unit="frame", desc="generating")
        for step in session.iter_frames(sync_every=sync_every):
            frames.append(step.codes)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        session.close()
        codes = torch.stack(frames, dim=-1).cpu()  # [songs, K, T]
        lengths = session.lengths.cpu().tolist()
        return [codes[i, :, :length] for i, length in enumerate(lengths)]


@dataclass
class GenerationSession:
    """Explicit generation state: KV caches, last frame, per-song lengths and live controls.

    Controls (`sampling`, `set_prompt_weights`) may change between frames and apply from the next frame on.
    """

    generator: HeartMuLaGenerator
    songs: list[SongRequest]
    sampling: SamplingParams
    max_new_frames: int
    compat: bool = False
    guided: bool | None = None
    min_new_frames: int = 0  # end-of-song is not sampled before this frame (0: the model decides from frame 1)
    lyrics_guided: bool | None = None  # twin rows without lyrics for sung songs (None: when a lyrics scale is set)
    rows: list[_Row] = field(init=False)
    frame_index: int = field(init=False, default=0)

    def __post_init__(self):
        if not self.songs:
            raise HeartMuLaError("no songs requested")
        if self.max_new_frames < 0:
            raise HeartMuLaError("max_new_frames must be >= 0")
        if self.min_new_frames < 0:
            raise HeartMuLaError("min_new_frames must be >= 0")
        if self.min_new_frames and self.compat:
            raise HeartMuLaError("a minimum length needs the default mode (compat samples end-of-song freely)")
        self.sampling.validate()
        if self.sampling.lyrics_scale is None:  # the model's default (None for the official release: upstream)
            self.sampling = replace(self.sampling, lyrics_scale=self.generator.gen_config.lyrics_scale)
        model = self.generator.model
        self.device, self.dtype = model.device, model.dtype
        prompts = [song.tag_prompts() for song in self.songs]
        if self.guided is None:
            self.guided = self.sampling.cfg_scale != 1.0
        if self.lyrics_guided is None:
            self.lyrics_guided = self.sampling.lyrics_scale is not None and any(s.lyrics.strip() for s in self.songs)
        self.rows = self._layout_rows(prompts)
        self._check_context()
        self.generators = [
            None if song.seed is None else torch.Generator(device=self.device).manual_seed(song.seed)
            for song in self.songs
        ]
        n = len(self.songs)
        self._index_rows()
        self.lengths = torch.zeros(n, dtype=torch.long, device=self.device)
        self.ended = torch.zeros(n, dtype=torch.bool, device=self.device)
        self._decoder_positions = torch.arange(model.num_codebooks, device=self.device)
        self._invalid_masks = self._build_invalid_masks()
        self._native_frames = True  # the native local frame where it applies (tools intercepting _sample turn it off)
        self._frame_guidance: torch.Tensor | None = None  # this frame's guidance matrix (default mode)
        self._last_codes: torch.Tensor | None = None
        self._history: list[torch.Tensor] = []  # every frame so far (a prompt added mid-song is re-read over them)
        self._caches: tuple[list, list] | None = None  # this session's KV caches (backbone, decoder layers)

    def _index_rows(self) -> None:
        """Index tensors derived from `self.rows` (rebuilt whenever a prompt row is added or removed)."""
        n, b = len(self.songs), len(self.rows)
        self.row_song = torch.tensor([r.song for r in self.rows], device=self.device)
        self.weights = torch.zeros(n, b, dtype=torch.float32, device=self.device)
        self.weights_without_lyrics = torch.zeros(n, b, dtype=torch.float32, device=self.device)
        for i, row in enumerate(self.rows):
            if not row.unconditional:
                target = self.weights_without_lyrics if row.without_lyrics else self.weights
                target[row.song, i] = row.weight
        for song in range(n):  # a song without twins (no lyrics): its lyrics-free branch is the conditional one
            if not self.weights_without_lyrics[song].any():
                self.weights_without_lyrics[song] = self.weights[song]
        if self.guided:
            uncond_of_song = {r.song: i for i, r in enumerate(self.rows) if r.unconditional}
            self.uncond_rows = torch.tensor([uncond_of_song[s] for s in range(n)], device=self.device)
            self.uncond_of_row = self.uncond_rows[self.row_song]
        self.unconditional_rows = (
            torch.tensor([r.unconditional for r in self.rows], device=self.device) if self.guided else None
        )

    # --- set-up -----------------------------------------------------------------------------------------------
    def _layout_rows(self, prompts: list[list[TagPrompt]]) -> list[_Row]:
        rows = []
        for s in range(len(self.songs)):
            weights = validate_weights([p.weight for p in prompts[s]])
            for prompt, weight in zip(prompts[s], weights):
                rows.append(self._make_row(s, prompt.tags, weight, False))
                if self._has_twins(s):
                    rows.append(self._make_row(s, prompt.tags, weight, False, without_lyrics=True))
        if self.guided:
            # The null row only needs the prompt's length: every text column embeds as the null text.
            for s in range(len(self.songs)):
                rows.append(self._make_row(s, prompts[s][0].tags, 0.0, True))
        return rows

    def _has_twins(self, song: int) -> bool:
        return self.lyrics_guided and bool(self.songs[song].lyrics.strip())

    def _make_row(self, song: int, tags: str, weight: float, unconditional: bool, without_lyrics: bool = False):
        """Prompt rows [tags, reference slot, lyrics] followed by the song's audio prompt, if any."""
        tokens, mask, slot = self.generator.build_prompt(tags, "" if without_lyrics else self.songs[song].lyrics)
        audio = self.songs[song].audio_codes
        if audio is not None:
            audio_tokens, audio_mask = self._frame_rows(self._check_audio_codes(audio))
            tokens, mask = torch.cat([tokens, audio_tokens]), torch.cat([mask, audio_mask])
        return _Row(song, tokens, mask, slot, unconditional, weight, tags, without_lyrics)

    def _check_audio_codes(self, codes) -> torch.Tensor:
        codes = torch.as_tensor(codes)
        k = self.generator.model.num_codebooks
        if codes.dim() != 2 or codes.shape[0] != k or codes.shape[1] == 0 or codes.is_floating_point():
            raise HeartMuLaError(f"an audio prompt must be integer codes of shape [{k}, frames], got "
                                 f"{list(codes.shape)} {codes.dtype}")
        size = self.generator.codebook_size
        if int(codes.min()) < 0 or int(codes.max()) >= size:
            raise HeartMuLaError(f"audio prompt codes must lie in [0, {size}): encode the audio with a codec whose "
                                 "codebook matches this model")
        return codes.long().cpu()

    def _frame_rows(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes [K, T] -> (tokens, mask) [T, K+1] laid out exactly like the frames fed back while generating."""
        k = self.generator.model.num_codebooks
        tokens = torch.full((codes.shape[1], k + 1), self.generator.gen_config.empty_id, dtype=torch.long)
        tokens[:, :k] = codes.t()
        mask = torch.ones_like(tokens, dtype=torch.bool)
        mask[:, -1] = False
        return tokens, mask

    def _check_context(self) -> None:
        max_seq_len = self.generator.model.config.backbone.max_seq_len
        longest = max(len(r.tokens) for r in self.rows)
        if longest + self.max_new_frames > max_seq_len:
            room = max(0, max_seq_len - longest)
            raise HeartMuLaError(
                f"prompt ({longest} tokens) + {self.max_new_frames} frames exceeds the model's context of "
                f"{max_seq_len} positions; ask for at most {room / FRAME_RATE:.1f} s or shorten the lyrics/tags"
            )

    def _build_invalid_masks(self) -> list[torch.Tensor] | None:
        """Per codebook, -inf where a code must never be sampled and 0 elsewhere, added to the logits (one add is
        cheaper than a masked fill, once per codebook per frame). None in compat mode."""
        if self.compat:
            return None
        vocab = self.generator.model.config.audio_vocab_size
        size, eos = self.generator.codebook_size, self.generator.gen_config.audio_eos_id
        masks = []
        for codebook in range(self.generator.model.num_codebooks):
            invalid = torch.full((vocab,), float("-inf"), device=self.device)
            invalid[:size] = 0.0
            if codebook == 0:
                invalid[eos] = 0.0
            masks.append(invalid)
        self._later_masks = torch.stack(masks[1:])  # codebooks 1..K-1 at once, for the native local frame
        self._first_frame_c0_mask = masks[0].clone()
        self._first_frame_c0_mask[eos] = float("-inf")  # a song has at least one frame
        return masks

    # --- the loop ---------------------------------------------------------------------------------------------
    def set_prompt_weights(self, song: int, weights: Sequence[float]) -> None:
        """New weights for the song's tag prompts (normalised to sum 1); they apply from the next frame."""
        if not 0 <= song < len(self.songs):
            raise HeartMuLaError(f"song index {song} out of range")
        rows = self._prompt_rows(song)
        if len(weights) != len(rows):
            raise HeartMuLaError(f"song {song} has {len(rows)} tag prompts, got {len(weights)} weights")
        normalised = validate_weights([float(w) for w in weights])
        for prompt_rows in (rows, self._prompt_rows(song, without_lyrics=True)):  # a twin follows its prompt
            for i, w in zip(prompt_rows, normalised):
                self.rows[i].weight = w
        self._index_rows()

    def _prompt_rows(self, song: int, without_lyrics: bool = False) -> list[int]:
        """Indices of the song's rows for its tag prompts in prompt order (or of their lyrics-free twins)."""
        return [i for i, r in enumerate(self.rows)
                if r.song == song and not r.unconditional and r.without_lyrics == without_lyrics]

    def prompt_tags(self, song: int = 0) -> list[tuple[str, float]]:
        """The song's tag prompts and their current (normalised) weights, in row order."""
        return [(self.rows[i].tags, self.rows[i].weight) for i in self._prompt_rows(song)]

    def add_prompt(self, song: int, tags: str, weights: Sequence[float]) -> None:
        """Add a tag prompt to a song; `weights` covers all its prompts, the new one last. Applies from the next frame.

        Mid-song, the new conditional row must see the same history as the others: its prompt and every frame fed
        so far run through the backbone once (one row), and its K/V join the batch's caches, left-padded like the
        rest (the caches grow to the left if the new prompt is longer than the longest row).
        """
        if not 0 <= song < len(self.songs):
            raise HeartMuLaError(f"song index {song} out of range")
        if not tags.strip():
            raise HeartMuLaError("a tag prompt needs at least one tag")
        current = len(self.prompt_tags(song))
        if len(weights) != current + 1:
            raise HeartMuLaError(f"song {song} will have {current + 1} tag prompts, got {len(weights)} weights")
        normalised = validate_weights([float(w) for w in weights])
        row = self._make_row(song, tags, 0.0, False)
        max_seq_len = self.generator.model.config.backbone.max_seq_len
        if len(row.tokens) + self.max_new_frames > max_seq_len:
            raise HeartMuLaError(f"tag prompt {tags!r} makes the prompt too long for the model's context "
                                 f"({len(row.tokens)} + {self.max_new_frames} frames > {max_seq_len})")
        new_rows = [row]
        if self._has_twins(song):
            new_rows.append(self._make_row(song, tags, 0.0, False, without_lyrics=True))
        for new_row in new_rows:
            if self.frame_index > 0:
                self._add_row_to_caches(new_row)
            self.rows.append(new_row)
        self.set_prompt_weights(song, normalised)

    def remove_prompt(self, song: int, index: int, weights: Sequence[float]) -> None:
        """Drop the song's tag prompt number `index`; `weights` covers the remaining prompts. Applies from the next
        frame (its row leaves the batch, so the remaining prompts cost what they would have cost alone)."""
        rows = self._prompt_rows(song) if 0 <= song < len(self.songs) else []
        if not 0 <= index < len(rows):
            raise HeartMuLaError(f"song {song} has no tag prompt number {index}")
        if len(rows) == 1:
            raise HeartMuLaError("a song needs at least one tag prompt; add the new one before removing the last")
        if len(weights) != len(rows) - 1:
            raise HeartMuLaError(f"song {song} will have {len(rows) - 1} tag prompts, got {len(weights)} weights")
        normalised = validate_weights([float(w) for w in weights])
        twins = self._prompt_rows(song, without_lyrics=True)
        drop = {rows[index], *twins[index : index + 1]}
        keep = [i for i in range(len(self.rows)) if i not in drop]
        if self.frame_index > 0:
            self._activate()
            index_tensor = torch.tensor(keep, device=self.device)
            backbone = self.generator.model.backbone
            for layer in backbone.layers:
                cache = layer.attn.cache
                cache.k, cache.v = cache.k[index_tensor], cache.v[index_tensor]
            self.pads = [self.pads[i] for i in keep]
            self.next_positions = self.next_positions[index_tensor]
            self._rebuild_key_mask(backbone.cache_capacity)
            self._resize_decoder_cache(len(keep))
        self.rows = [self.rows[i] for i in keep]
        self.set_prompt_weights(song, normalised)

    def _rebuild_key_mask(self, capacity: int) -> None:
        self.key_mask = None
        if any(self.pads):
            slot_index = torch.arange(capacity, device=self.device)
            self.key_mask = slot_index[None, :] >= torch.tensor(self.pads, device=self.device)[:, None]

    def _resize_decoder_cache(self, rows: int) -> None:
        model = self.generator.model
        model.decoder.setup_cache(rows, model.num_codebooks, self.dtype, self.device)
        self._caches = self._model_caches()

    @torch.inference_mode()
    def _add_row_to_caches(self, row: _Row) -> None:
        model = self.generator.model
        fed = self._history[: self.frame_index - 1]  # the last frame is fed by the next step
        tokens, mask = row.tokens, row.mask
        if fed:
            codes = torch.stack([frame[row.song] for frame in fed], dim=1).cpu()
            frame_tokens, frame_mask = self._frame_rows(codes)
            tokens, mask = torch.cat([tokens, frame_tokens]), torch.cat([mask, frame_mask])
        length = len(tokens)
        shift = max(0, length - self.next_slot)  # slots to add on the left so the new row fits
        pad = self.next_slot + shift - length
        hidden = self._embed_prompts([row], tokens[None].to(self.device), mask[None].to(self.device), None, [0])
        self._activate()
        model.use_upstream_products(self.compat)
        old = self._caches[0]
        model.backbone.setup_cache(1, length, self.dtype, self.device)
        model.backbone(hidden, torch.arange(length, device=self.device)[None], start=0)
        fresh = self._model_caches()[0]
        b, capacity = len(self.rows), old[0].capacity + shift
        model.backbone.setup_cache(b + 1, capacity, self.dtype, self.device)
        for layer, before, new_row in zip(model.backbone.layers, old, fresh):
            for name in ("k", "v"):
                target = getattr(layer.attn.cache, name)
                target[:b, :, shift : shift + self.next_slot] = getattr(before, name)[:, :, : self.next_slot]
                target[b, :, pad : pad + length] = getattr(new_row, name)[0]
        self.pads = [p + shift for p in self.pads] + [pad]
        self.next_slot += shift
        self.next_positions = torch.cat([self.next_positions, torch.full((1, 1), length, device=self.device)])
        self._rebuild_key_mask(capacity)
        self._resize_decoder_cache(b + 1)

    # --- explicit state (pause, save, resume) ----------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, JSON-able metadata) that `GenerationSession.from_state` turns back into this session.

        Holds the filled part of the backbone's KV caches, every song's random-generator state and all frames so
        far, so a resumed session continues exactly as this one would have.
        """
        tensors: dict[str, torch.Tensor] = {}
        rows = []
        for i, r in enumerate(self.rows):
            tensors[f"row.{i}.tokens"], tensors[f"row.{i}.mask"] = r.tokens, r.mask
            rows.append(dict(song=r.song, reference_slot=r.reference_slot, unconditional=r.unconditional,
                             weight=r.weight, tags=r.tags, without_lyrics=r.without_lyrics))
        songs = []
        for s, song in enumerate(self.songs):
            if song.reference_embedding is not None:
                tensors[f"song.{s}.reference"] = torch.as_tensor(song.reference_embedding, dtype=torch.float32)
            if song.audio_codes is not None:
                tensors[f"song.{s}.audio_codes"] = torch.as_tensor(song.audio_codes).long()
            if self.generators[s] is not None:
                tensors[f"song.{s}.rng"] = self.generators[s].get_state()
            songs.append(dict(lyrics=song.lyrics, seed=song.seed))
        tensors["lengths"], tensors["ended"] = self.lengths, self.ended
        if self._history:
            tensors["history"] = torch.stack(self._history)  # [frames, songs, K]
        meta = dict(songs=songs, rows=rows, sampling=dict(self.sampling.__dict__), max_new_frames=self.max_new_frames,
                    compat=self.compat, guided=self.guided, frame_index=self.frame_index,
                    min_new_frames=self.min_new_frames, lyrics_guided=self.lyrics_guided)
        if self.frame_index > 0:
            self._activate()
            for i, layer in enumerate(self.generator.model.backbone.layers):
                tensors[f"kv.{i}.k"] = layer.attn.cache.k[:, :, : self.next_slot]
                tensors[f"kv.{i}.v"] = layer.attn.cache.v[:, :, : self.next_slot]
            tensors["next_positions"] = self.next_positions
            meta.update(next_slot=self.next_slot, pads=self.pads, capacity=self.generator.model.backbone.cache_capacity)
        return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, meta

    @classmethod
    def from_state(cls, generator: HeartMuLaGenerator, tensors: dict[str, torch.Tensor], meta: dict):
        """Rebuild a session saved with `state_dict` (on a generator with the same model)."""
        songs = []
        for s, info in enumerate(meta["songs"]):
            tags = [(r["tags"], r["weight"]) for r in meta["rows"]
                    if r["song"] == s and not r["unconditional"] and not r.get("without_lyrics")]
            songs.append(SongRequest(lyrics=info["lyrics"], tags=tags, seed=info["seed"],
                                     reference_embedding=tensors.get(f"song.{s}.reference"),
                                     audio_codes=tensors.get(f"song.{s}.audio_codes")))
        session = cls(generator, songs, SamplingParams(**meta["sampling"]), meta["max_new_frames"], meta["compat"],
                      meta["guided"], meta.get("min_new_frames", 0), meta.get("lyrics_guided", False))
        session.rows = [_Row(r["song"], tensors[f"row.{i}.tokens"], tensors[f"row.{i}.mask"], r["reference_slot"],
                             r["unconditional"], r["weight"], r["tags"], r.get("without_lyrics", False))
                        for i, r in enumerate(meta["rows"])]
        session._index_rows()
        device = session.device
        for s, g in enumerate(session.generators):
            if g is not None:
                g.set_state(tensors[f"song.{s}.rng"])
        session.lengths, session.ended = tensors["lengths"].to(device), tensors["ended"].to(device)
        session.frame_index = meta["frame_index"]
        if "history" in tensors:
            session._history = list(tensors["history"].to(device).unbind(0))
            session._last_codes = session._history[-1]
        if session.frame_index > 0:
            model = generator.model
            b = len(session.rows)
            filled = meta["next_slot"]
            if tensors["kv.0.k"].shape[0] != b or len(model.backbone.layers) * 2 != sum(
                k.startswith("kv.") for k in tensors
            ):
                raise HeartMuLaError("this saved state belongs to a different model")
            model.backbone.setup_cache(b, meta["capacity"], session.dtype, device)
            for i, layer in enumerate(model.backbone.layers):
                for name in ("k", "v"):
                    saved = tensors[f"kv.{i}.{name}"]
                    target = getattr(layer.attn.cache, name)
                    if saved.shape[1:2] + saved.shape[3:] != target.shape[1:2] + target.shape[3:]:
                        raise HeartMuLaError("this saved state belongs to a model with different attention sizes")
                    target[:, :, :filled] = saved.to(device, session.dtype)
            session._resize_decoder_cache(b)
            session.next_slot, session.pads = filled, list(meta["pads"])
            session.next_positions = tensors["next_positions"].to(device)
            session._rebuild_key_mask(meta["capacity"])
        return session

    def update_sampling(self, **changes) -> None:
        """Change temperature / top_k / cfg_scale / lyrics_scale from the next frame on; invalid values leave all
        unchanged."""
        candidate = SamplingParams(**{**self.sampling.__dict__, **changes}).validate()
        if candidate.cfg_scale != 1.0 and not self.guided:
            raise HeartMuLaError("this session has no unconditional row; start it with guided=True to change CFG")
        if candidate.lyrics_scale != self.sampling.lyrics_scale and not self.lyrics_guided:
            raise HeartMuLaError("this session has no rows without lyrics; start it with a lyrics scale (and lyrics) "
                                 "to change it")
        self.sampling = candidate

    def _guidance_matrix(self) -> torch.Tensor:
        """[songs, rows]: each song's guided logits as one weighted sum of the rows' logits (the module docstring's
        formulas with their sums expanded), so that guidance is one product per codebook."""
        cfg, weights = self.sampling.cfg_scale, self.weights
        if self.guided:
            uncond = torch.zeros_like(weights)
            uncond[torch.arange(len(self.songs), device=self.device), self.uncond_rows] = 1.0
        if self.lyrics_guided:
            bare = self.weights_without_lyrics
            lyrics_delta = (weights - bare) * self.sampling.lyrics_scale
            return (bare if not self.guided else uncond + (bare - uncond) * cfg) + lyrics_delta
        if not self.guided:
            return weights
        return uncond + (weights - uncond * weights.sum(dim=1, keepdim=True)) * cfg

    def _guide(self, logits: torch.Tensor) -> torch.Tensor:
        """Row logits [rows, V] -> guided logits [songs, V]. Compat mode keeps upstream's operations (its float32
        rounding); the default mode takes one product."""
        logits = logits.float()
        if not self.compat:
            return self._guidance_matrix() @ logits
        if self.lyrics_guided:
            conditional, without_lyrics = self.weights @ logits, self.weights_without_lyrics @ logits
            lyrics_delta = (conditional - without_lyrics) * self.sampling.lyrics_scale
            if not self.guided:
                return without_lyrics + lyrics_delta
            uncond = logits.index_select(0, self.uncond_rows)
            return uncond + (without_lyrics - uncond) * self.sampling.cfg_scale + lyrics_delta
        if not self.guided:
            return self.weights @ logits
        delta = self.weights @ (logits - logits.index_select(0, self.uncond_of_row))
        return logits.index_select(0, self.uncond_rows) + delta * self.sampling.cfg_scale

    def _sample(self, logits: torch.Tensor, codebook: int, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Row logits -> codes [songs]; `noise`: pre-drawn sampling noise (default mode)."""
        s = self.sampling
        if self.compat:  # upstream's guidance operations, sampler and random stream
            return sample_top_k(self._guide(logits), s.top_k, s.temperature, self.generators)
        invalid = self._invalid_masks[codebook]
        if codebook == 0 and self.frame_index < max(1, self.min_new_frames):
            invalid = self._first_frame_c0_mask  # EOS masked: a song has at least one (or min_new_frames)
        guided = torch.addmm(invalid, self._frame_guidance, logits.float())  # guidance and mask, one call
        return sample_among_top_k(guided, s.top_k, s.temperature, self.generators, noise)

    def _codebook_noise(self) -> torch.Tensor | None:
        """Default mode: the sampling noise of this frame's codebooks 1..K-1, [songs, K-1, k], drawn at once from each
        song's generator (None where the most likely code is taken, and in compat mode, which draws upstream's)."""
        s = self.sampling
        if self.compat or s.temperature <= 0 or s.top_k == 1:
            return None
        model = self.generator.model
        shape = (len(self.songs), model.num_codebooks - 1, min(s.top_k, model.config.audio_vocab_size))
        return exponential_noise(shape, torch.float32, self.device, self.generators)

    def _frame_from_hidden(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """Backbone's last hidden state [rows, D] -> codes [songs, K] via codebook 0 and the local decoder."""
        model = self.generator.model
        self._frame_guidance = None if self.compat else self._guidance_matrix()  # controls change between frames
        codes = [self._sample(model.codebook0_head(last_hidden), 0)]
        noise = self._codebook_noise()
        later_codes = self._native_local_frame(last_hidden, codes[0], noise)
        if later_codes is not None:
            return torch.cat([codes[0][:, None], later_codes], dim=1)
        # The local decoder starts afresh every frame: [backbone state, codebook 0] at positions 0 and 1, then one
        # codebook per position.
        decoder_in = torch.stack([last_hidden, model.embed_audio(0, codes[0][self.row_song])], dim=1)
        start = 0
        for codebook in range(1, model.num_codebooks):
            positions = self._decoder_positions[start : start + decoder_in.shape[1]]
            hidden = model.decoder(model.projection(decoder_in), positions, start=start)
            logits = model.codebook_logits(codebook, hidden[:, -1])
            codes.append(self._sample(logits, codebook, None if noise is None else noise[:, codebook - 1]))
            start += decoder_in.shape[1]
            decoder_in = model.embed_audio(codebook, codes[-1][self.row_song])[:, None]
        return torch.stack(codes, dim=1)

    def _native_local_frame(self, last_hidden, first_codes, noise) -> torch.Tensor | None:
        """Codebooks 1..K-1 [songs, K-1] in one native call (`decoding.cpp`'s local_frame: the loop of
        `_frame_from_hidden` without its 64 small torch operations per codebook), where the local decoder, the
        projection and the heads run on float32, bfloat16 or int8 / int4 few-row products on a CPU in the default
        mode; None elsewhere."""
        model = self.generator.model
        if self.compat or not self._native_frames:
            return None
        weights = model.local_frame_weights(last_hidden.dtype)
        if weights is None or not model.decoder.native_step_applies(last_hidden[:, None]):  # one token per row
            return None
        kernels = native.kernels()
        if kernels is None:
            return None
        decoder = model.decoder
        c = decoder.config
        if noise is None:  # the most likely codes
            noise = torch.empty(len(self.songs), model.num_codebooks - 1, 0)
        rope = torch.view_as_real(decoder.rope_rows(self._decoder_positions))[0]
        return kernels.local_frame(
            last_hidden.contiguous(), first_codes, self.row_song, self._frame_guidance, self._later_masks, noise,
            self.sampling.temperature, *weights, rope, decoder.native_tensors(), decoder.norm.scale, c.num_heads,
            c.num_kv_heads, c.norm_eps)

    def _prefill(self) -> torch.Tensor:
        model = self.generator.model
        longest = max(len(r.tokens) for r in self.rows)
        b, k1 = len(self.rows), model.num_codebooks + 1
        tokens = torch.zeros(b, longest, k1, dtype=torch.long)
        mask = torch.zeros(b, longest, k1, dtype=torch.bool)
        positions = torch.zeros(b, longest, dtype=torch.long)
        self.pads = [longest - len(r.tokens) for r in self.rows]
        for i, (row, pad) in enumerate(zip(self.rows, self.pads)):
            tokens[i, pad:] = row.tokens
            mask[i, pad:] = row.mask
            positions[i, pad:] = torch.arange(len(row.tokens))
        tokens, mask, positions = tokens.to(self.device), mask.to(self.device), positions.to(self.device)
        hidden = self._embed_prompts(self.rows, tokens, mask, self.unconditional_rows, self.pads)

        capacity = longest + self.max_new_frames
        model.backbone.setup_cache(b, capacity, self.dtype, self.device)
        model.decoder.setup_cache(b, model.num_codebooks, self.dtype, self.device)
        self._caches = self._model_caches()
        self.key_mask = None
        if any(self.pads):
            slot_index = torch.arange(capacity, device=self.device)
            self.key_mask = slot_index[None, :] >= torch.tensor(self.pads, device=self.device)[:, None]
        self.next_slot = longest
        self.next_positions = positions[:, -1:] + 1
        key_mask = None if self.key_mask is None else self.key_mask[:, :longest]
        out = model.backbone(hidden, positions, start=0, key_mask=key_mask)
        return out[:, -1]

    def _embed_prompts(self, rows, tokens, mask, unconditional, pads) -> torch.Tensor:
        """Embedded prompt rows [b, s, D], the reference-audio slot filled in."""
        model = self.generator.model
        hidden = model.embed_rows(tokens, mask, unconditional)
        # The reference-audio slot: muq_linear(embedding) for conditional rows, the null text for the others.
        references = torch.stack([
            torch.zeros(model.config.muq_dim) if self.songs[r.song].reference_embedding is None
            else torch.as_tensor(self.songs[r.song].reference_embedding, dtype=torch.float32).reshape(-1)
            for r in rows
        ]).to(self.device, self.dtype)
        slot_values = model.muq_linear(references)
        if unconditional is not None:
            slot_values = torch.where(unconditional[:, None], model.unconditional_embedding(), slot_values)
        slots = torch.tensor([pad + r.reference_slot for r, pad in zip(rows, pads)], device=self.device)
        hidden[torch.arange(len(rows), device=self.device), slots] = slot_values.to(hidden.dtype)
        return hidden

    def _model_caches(self) -> tuple[list, list]:
        model = self.generator.model
        backbone = [layer.attn.cache for layer in model.backbone.layers]
        return backbone, [layer.attn.cache for layer in model.decoder.layers]

    def _activate(self) -> None:
        """Install this session's KV caches in the model: several sessions may share one model, taking turns."""
        model = self.generator.model
        if self._caches is None:
            raise HeartMuLaError("this session was closed")
        for layers, caches in zip((model.backbone.layers, model.decoder.layers), self._caches):
            for layer, cache in zip(layers, caches):
                layer.attn.cache = cache

    def _step(self) -> torch.Tensor:
        """Feed the last frame back and return the backbone's new last hidden state."""
        model = self.generator.model
        b, k = len(self.rows), model.num_codebooks
        tokens = torch.full((b, 1, k + 1), self.generator.gen_config.empty_id, dtype=torch.long, device=self.device)
        tokens[:, 0, :k] = self._last_codes[self.row_song]
        mask = torch.ones_like(tokens, dtype=torch.bool)
        mask[..., -1] = False
        hidden = model.embed_rows(tokens, mask, self.unconditional_rows)
        key_mask = None if self.key_mask is None else self.key_mask[:, : self.next_slot + 1]
        out = model.backbone(hidden, self.next_positions, start=self.next_slot, key_mask=key_mask)
        self.next_slot += 1
        self.next_positions = self.next_positions + 1
        return out[:, -1]

    def _is_end(self, codes: torch.Tensor) -> torch.Tensor:
        eos = self.generator.gen_config.audio_eos_id
        if self.compat:
            if self.frame_index == 0:  # upstream keeps frame 0 whatever it holds
                return torch.zeros(len(self.songs), dtype=torch.bool, device=self.device)
            return (codes >= eos).any(dim=1)
        return codes[:, 0] == eos

    @torch.inference_mode()
    def next_frame(self) -> FrameStep:
        """Generate one frame for every song (frame 0 comes from the prompt prefill)."""
        if self.frame_index > self.max_new_frames:
            raise HeartMuLaError("this session has produced all the frames it was set up for")
        if self.frame_index > 0:
            self._activate()
        self.generator.model.use_upstream_products(self.compat)
        hidden = self._prefill() if self.frame_index == 0 else self._step()
        codes = self._frame_from_hidden(hidden)
        ended_now = self._is_end(codes)
        valid = ~(self.ended | ended_now)
        self.ended |= ended_now
        self.lengths += valid
        self._last_codes = codes
        self._history.append(codes)
        step = FrameStep(self.frame_index, codes, valid)
        self.frame_index += 1
        return step

    def iter_frames(self, sync_every: int = 1) -> Iterator[FrameStep]:
        """Yield frames until every song has ended or the frame budget is spent.

        The end check reads the device only every `sync_every` frames, so the loop never waits on the device per
        frame; frames past a song's end are marked invalid.
        """
        while self.frame_index <= self.max_new_frames:
            yield self.next_frame()
            if self.frame_index % max(1, sync_every) == 0 and bool(self.ended.all()):
                return

    def close(self) -> None:
        """Free the KV caches (the model's too, unless another session has installed its own since)."""
        model = self.generator.model
        if self._caches is None or model.backbone.layers[0].attn.cache is self._caches[0][0]:
            model.backbone.drop_cache()
            model.decoder.drop_cache()
        self._caches = None
