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
from contextlib import nullcontext
from dataclasses import replace

import torch

from heartmula.constants import FRAME_MS, FRAME_RATE
from heartmula.errors import HeartMuLaError
from heartmula.lm.backends import local_frame_kernel, native_local_frame
from heartmula.lm.config import GenerationConfig
from heartmula.lm.guidance import Guidance
from heartmula.lm.inference_state import InferenceState
from heartmula.lm.model import HeartMuLa
from heartmula.lm.prompts import PromptRow, PromptRowBuilder, frame_rows, text_prompt
from heartmula.lm.requests import FrameStep, SongRequest
from heartmula.lm.samplers import DefaultSampler, SamplingParams, UpstreamSampler
from heartmula.lm.session_state import session_from_state, session_state_dict
from heartmula.nn.layers import upstream_products
from heartmula.text import TextTokenizer, validate_weights

__all__ = ["FRAME_RATE", "FrameStep", "GenerationSession", "HeartMuLaGenerator", "SamplingParams", "SongRequest",
           "frames_for_duration", "min_frames_for"]


def frames_for_duration(seconds: float) -> int:
    """Frames generated after the prefill frame for an upstream `max_audio_length_ms` of `seconds`."""
    if not seconds > 0:
        raise HeartMuLaError(f"duration must be > 0 seconds, got {seconds}")
    return int(seconds * 1000) // FRAME_MS


def min_frames_for(min_seconds: float, max_seconds: float) -> int:
    """Frames a song must have at least for `min_seconds` (capped at what `max_seconds` allows; 0 = no minimum)."""
    if not 0 <= min_seconds < float("inf"):
        raise HeartMuLaError(f"minimum duration must be >= 0 seconds, got {min_seconds}")
    return min(math.ceil(min_seconds * FRAME_RATE - 1e-9), 1 + frames_for_duration(max_seconds))


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
        return text_prompt(self.tokenizer, self.model.num_codebooks, tags, lyrics)

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


class GenerationSession:
    """One batch of songs being generated: prompt rows, controls, the sampler and the inference state (KV caches).

    Controls (`update_sampling`, `set_prompt_weights`, `add_prompt`, `remove_prompt`) may change between frames and
    apply from the next frame on. Sessions sharing one model each pass their own caches into it.
    """

    def __init__(self, generator: HeartMuLaGenerator, songs: list[SongRequest], sampling: SamplingParams,
                 max_new_frames: int, compat: bool = False, guided: bool | None = None, min_new_frames: int = 0,
                 lyrics_guided: bool | None = None):
        if not songs:
            raise HeartMuLaError("no songs requested")
        if max_new_frames < 0:
            raise HeartMuLaError("max_new_frames must be >= 0")
        if min_new_frames < 0:
            raise HeartMuLaError("min_new_frames must be >= 0")
        if min_new_frames and compat:
            raise HeartMuLaError("a minimum length needs the default mode (compat samples end-of-song freely)")
        sampling.validate()
        if sampling.lyrics_scale is None:  # the model's default (None for the official release: upstream)
            sampling = replace(sampling, lyrics_scale=generator.gen_config.lyrics_scale)
        self.generator, self.model, self.songs, self.sampling = generator, generator.model, songs, sampling
        self.max_new_frames, self.compat, self.min_new_frames = max_new_frames, compat, min_new_frames
        self.device = self.model.device
        self.guided = sampling.cfg_scale != 1.0 if guided is None else guided
        if lyrics_guided is None:  # twin rows without lyrics for sung songs when a lyrics scale is set
            lyrics_guided = sampling.lyrics_scale is not None and any(s.lyrics.strip() for s in songs)
        self.lyrics_guided = lyrics_guided
        self.row_builder = PromptRowBuilder(generator.tokenizer, self.model.num_codebooks, generator.codebook_size,
                                            generator.gen_config.empty_id, songs, lyrics_guided)
        self.rows = self.row_builder.layout([song.tag_prompts() for song in songs], self.guided)
        self._check_context(max(len(r.tokens) for r in self.rows), "prompt")
        generators = [None if song.seed is None else torch.Generator(device=self.device).manual_seed(song.seed)
                      for song in songs]
        self.sampler = self._make_sampler(generators)
        self.guidance = Guidance.of_rows(self.rows, len(songs), self.guided, lyrics_guided, self.device)
        self.lengths = torch.zeros(len(songs), dtype=torch.long, device=self.device)
        self.ended = torch.zeros(len(songs), dtype=torch.bool, device=self.device)
        self.frame_index = 0
        self.history: list[torch.Tensor] = []  # every frame so far (a prompt added mid-song is re-read over them)
        self.state: InferenceState | None = None  # the KV caches, from the prefill on

    def _make_sampler(self, generators):
        eos = self.generator.gen_config.audio_eos_id
        if self.compat:
            return UpstreamSampler(generators, eos)
        return DefaultSampler(generators, eos, self.generator.codebook_size, self.model.config.audio_vocab_size,
                              self.model.num_codebooks, self.min_new_frames, self.device)

    @property
    def generators(self) -> list[torch.Generator | None]:
        """Each song's random generator (None: unseeded)."""
        return self.sampler.generators

    # --- prompt rows ------------------------------------------------------------------------------------------
    def _check_context(self, longest: int, what: str) -> None:
        max_seq_len = self.model.config.backbone.max_seq_len
        if longest + self.max_new_frames > max_seq_len:
            room = max(0, max_seq_len - longest)
            raise HeartMuLaError(
                f"{what} ({longest} tokens) + {self.max_new_frames} frames exceeds the model's context of "
                f"{max_seq_len} positions; ask for at most {room / FRAME_RATE:.1f} s or shorten the lyrics/tags"
            )

    def _rows_changed(self) -> None:
        self.guidance = Guidance.of_rows(self.rows, len(self.songs), self.guided, self.lyrics_guided, self.device)

    # --- the frame loop ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def next_frame(self) -> FrameStep:
        """Generate one frame for every song (frame 0 comes from the prompt prefill)."""
        if self.frame_index > self.max_new_frames:
            raise HeartMuLaError("this session has produced all the frames it was set up for")
        if self.frame_index > 0 and self.state is None:
            raise HeartMuLaError("this session was closed")
        self.sampler.start_frame(self.guidance, self.sampling, self.frame_index)
        with self._products():
            hidden = self._prefill() if self.frame_index == 0 else self._step()
            codes = self._frame_from_hidden(hidden)
        ended_now = self.sampler.is_end(codes)
        valid = ~(self.ended | ended_now)
        self.ended |= ended_now
        self.lengths += valid
        self.history.append(codes)
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

    def _products(self):
        """Compat mode computes with upstream's F.linear products (a context of this call, not of the model)."""
        return upstream_products() if self.sampler.upstream_products else nullcontext()

    def _prefill(self) -> torch.Tensor:
        """Run the prompts through the backbone into a new inference state; returns the last hidden state [rows, D]."""
        longest = max(len(r.tokens) for r in self.rows)
        b, k1 = len(self.rows), self.model.num_codebooks + 1
        tokens = torch.zeros(b, longest, k1, dtype=torch.long)
        mask = torch.zeros(b, longest, k1, dtype=torch.bool)
        positions = torch.zeros(b, longest, dtype=torch.long)
        pads = [longest - len(r.tokens) for r in self.rows]
        for i, (row, pad) in enumerate(zip(self.rows, pads)):
            tokens[i, pad:] = row.tokens
            mask[i, pad:] = row.mask
            positions[i, pad:] = torch.arange(len(row.tokens))
        tokens, mask, positions = tokens.to(self.device), mask.to(self.device), positions.to(self.device)
        hidden = self._embed_prompts(self.rows, tokens, mask, self.guidance.null_rows, pads)
        self.state = InferenceState.allocate(self.model, pads, longest + self.max_new_frames, longest,
                                             positions[:, -1:] + 1)
        out = self.model.backbone(hidden, positions, start=0, key_mask=self.state.keys_until(longest),
                                  cache=self.state.backbone)
        return out[:, -1]

    def _embed_prompts(self, rows, tokens, mask, unconditional, pads) -> torch.Tensor:
        """Embedded prompt rows [b, s, D], the reference-audio slot filled in."""
        references = [self.songs[r.song].reference_embedding for r in rows]
        slots = [pad + r.reference_slot for r, pad in zip(rows, pads)]
        return self.model.embed_prompt_rows(tokens, mask, unconditional, references, slots)

    def _step(self) -> torch.Tensor:
        """Feed the last frame back and return the backbone's new last hidden state [rows, D]."""
        state, k = self.state, self.model.num_codebooks
        tokens = torch.full((len(self.rows), 1, k + 1), self.generator.gen_config.empty_id, dtype=torch.long,
                            device=self.device)
        tokens[:, 0, :k] = self.history[-1][self.guidance.row_song]
        mask = torch.ones_like(tokens, dtype=torch.bool)
        mask[..., -1] = False
        hidden = self.model.embed_rows(tokens, mask, self.guidance.null_rows)
        out = self.model.backbone(hidden, state.next_positions, start=state.next_slot,
                                  key_mask=state.keys_until(state.next_slot + 1), cache=state.backbone)
        state.advance()
        return out[:, -1]

    def _frame_from_hidden(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """Backbone's last hidden state [rows, D] -> codes [songs, K] via codebook 0 and the local decoder."""
        model, sampler, row_song = self.model, self.sampler, self.guidance.row_song
        codes = [sampler.sample(model.codebook0_head(last_hidden), 0)]
        noise = sampler.later_noise(len(self.songs), model.num_codebooks, model.config.audio_vocab_size)
        kernels = local_frame_kernel(model, last_hidden) if getattr(sampler, "fused_local_frame", False) else None
        if kernels is not None:
            later = native_local_frame(kernels, model, last_hidden, codes[0], row_song, sampler.matrix,
                                       sampler.later_masks, noise, self.sampling.temperature, self.state.decoder)
            return torch.cat([codes[0][:, None], later], dim=1)
        # The local decoder starts afresh every frame: [backbone state, codebook 0] at positions 0 and 1, then one
        # codebook per position.
        decoder_in = torch.stack([last_hidden, model.embed_audio(0, codes[0][row_song])], dim=1)
        positions = torch.arange(model.num_codebooks, device=self.device)
        start = 0
        for codebook in range(1, model.num_codebooks):
            hidden = model.decoder(model.projection(decoder_in), positions[start : start + decoder_in.shape[1]],
                                   start=start, cache=self.state.decoder)
            logits = model.codebook_logits(codebook, hidden[:, -1])
            codes.append(sampler.sample(logits, codebook, None if noise is None else noise[:, codebook - 1]))
            start += decoder_in.shape[1]
            decoder_in = model.embed_audio(codebook, codes[-1][row_song])[:, None]
        return torch.stack(codes, dim=1)

    def guide(self, logits: torch.Tensor) -> torch.Tensor:
        """Row logits [rows, V] -> guided logits [songs, V] under the current controls, as the sampler guides them."""
        self.sampler.start_frame(self.guidance, self.sampling, self.frame_index)
        return self.sampler.guide(logits)

    def close(self) -> None:
        """Free the KV caches."""
        self.state = None

    # --- live controls ----------------------------------------------------------------------------------------
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
        self._rows_changed()

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
        row = self.row_builder.row(song, tags, 0.0, False)
        max_seq_len = self.model.config.backbone.max_seq_len
        if len(row.tokens) + self.max_new_frames > max_seq_len:
            raise HeartMuLaError(f"tag prompt {tags!r} makes the prompt too long for the model's context "
                                 f"({len(row.tokens)} + {self.max_new_frames} frames > {max_seq_len})")
        new_rows = [row]
        if self.row_builder.has_twins(song):
            new_rows.append(self.row_builder.row(song, tags, 0.0, False, without_lyrics=True))
        for new_row in new_rows:
            if self.frame_index > 0:
                self._add_row_to_state(new_row)
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
            self._live_state().keep_rows(keep, self.model)
        self.rows = [self.rows[i] for i in keep]
        self.set_prompt_weights(song, normalised)

    def _live_state(self) -> InferenceState:
        if self.state is None:
            raise HeartMuLaError("this session was closed")
        return self.state

    @torch.inference_mode()
    def _add_row_to_state(self, row: PromptRow) -> None:
        """Run a new row's prompt and the frames fed so far through the backbone and add its K/V to the caches."""
        state = self._live_state()
        fed = self.history[: self.frame_index - 1]  # the last frame is fed by the next step
        tokens, mask = row.tokens, row.mask
        if fed:
            codes = torch.stack([frame[row.song] for frame in fed], dim=1).cpu()
            frame_tokens, frame_mask = frame_rows(codes, self.generator.gen_config.empty_id)
            tokens, mask = torch.cat([tokens, frame_tokens]), torch.cat([mask, frame_mask])
        length = len(tokens)
        hidden = self._embed_prompts([row], tokens[None].to(self.device), mask[None].to(self.device), None, [0])
        row_cache = self.model.backbone.new_cache(1, length, self.model.dtype, self.device)
        with self._products():
            self.model.backbone(hidden, torch.arange(length, device=self.device)[None], start=0, cache=row_cache)
        state.append_row(row_cache, length, self.model)

    # --- explicit state (pause, save, resume) ----------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, JSON-able metadata) that `GenerationSession.from_state` turns back into this session
        (`heartmula.lm.session_state`)."""
        return session_state_dict(self)

    @classmethod
    def from_state(cls, generator: HeartMuLaGenerator, tensors: dict[str, torch.Tensor], meta: dict):
        """Rebuild a session saved with `state_dict` (on a generator with the same model)."""
        return session_from_state(cls, generator, tensors, meta)
