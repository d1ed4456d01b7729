"""A token cache: every manifest item's audio encoded once with a codec, for language-model training.

Layout of a cache folder:
    index.json                 {"format", "codec": {path, fingerprint, codebook_size, num_codebooks, sample_rate,
                               frame_rate}, "items": {id: {lyrics, tags, language, split, n_frames, shard}},
                               "skipped": {id: reason}, "clap": {path, fingerprint, embed_dim} (optional)}
    shard-00000.safetensors    one int16 tensor [num_codebooks, n_frames] per item, named by the item id
    clap-00000.safetensors     optional: one float32 tensor [embed_dim] per item, the HeartCLAP audio embedding of
                               the whole song (what the LM's reference-audio slot receives at generation time);
                               an item that has one names its file in the index ("clap_shard")

Shards are written every few items and the index is rewritten (atomically) after each shard, so an interrupted
run resumes at the first item not yet in the index. Unreadable items are reported in `skipped` and tried again on
the next run. A cache belongs to one codec: its fingerprint (a hash of the codec's config and weights) is stored
and checked, because codes of two codecs must never be mixed. Likewise for the CLAP model of the embeddings.
Embeddings are optional (caches made before them, or with `--no-clap`, have none): running tokenize again with a
CLAP model adds them to the items that lack them, from the audio alone (the codes are kept).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from heartmula.audio import load_audio
from heartmula.checkpoint import safetensors_files
from heartmula.clap import load_clap
from heartmula.codec.pretrained import load_codec, locate_codec
from heartmula.constants import FRAME_RATE
from heartmula.errors import HeartMuLaError
from heartmula.files import atomic_output
from heartmula.manifest import read_manifest

INDEX_FILE = "index.json"
FORMAT = "heartmula-token-cache-1"


def codec_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over the codec's config.json and its weight files (names sorted): changes whenever the codes would."""
    folder = Path(folder)
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for path in sorted(set(safetensors_files(folder).values())):
        digest.update(path.name.encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


@dataclass
class TokenizeReport:
    encoded: list[str] = field(default_factory=list)
    reused: int = 0
    embedded: list[str] = field(default_factory=list)  # items that got a CLAP embedding this run
    skipped: dict[str, str] = field(default_factory=dict)
    frames: int = 0


def read_index(cache: str | os.PathLike) -> dict:
    path = Path(cache) / INDEX_FILE
    if not path.is_file():
        raise HeartMuLaError(f"{cache} is not a token cache ({INDEX_FILE} is missing): build it with "
                             "`heartmula data tokenize MANIFEST --codec DIR --out CACHE`")
    index = json.loads(path.read_text(encoding="utf-8"))
    if index.get("format") != FORMAT:
        raise HeartMuLaError(f"{path} has format {index.get('format')!r}, expected {FORMAT!r}; rebuild the cache")
    return index


def _write_index(cache: Path, index: dict) -> None:
    with atomic_output(cache / INDEX_FILE) as tmp:
        tmp.write_text(json.dumps(index, ensure_ascii=False, indent=1), encoding="utf-8")


def _cache_index(out: Path, codec, codec_dir: Path, fingerprint: str) -> dict:
    """The index of the cache in `out`, or a new one for `codec`; refuses a cache of another codec."""
    if (out / INDEX_FILE).is_file():
        index = read_index(out)
        if index["codec"]["fingerprint"] != fingerprint:
            raise HeartMuLaError(
                f"{out} holds codes of another codec (fingerprint {index['codec']['fingerprint']}, this codec "
                f"{fingerprint}); choose a new --out folder"
            )
        return index
    config = codec.config
    return {
        "format": FORMAT,
        "codec": {"path": str(codec_dir.resolve()), "fingerprint": fingerprint,
                  "codebook_size": config.codebook_size, "num_codebooks": config.num_quantizers,
                  "sample_rate": codec.sample_rate, "frame_rate": FRAME_RATE},
        "items": {},
        "skipped": {},
    }


class _ShardWriter:
    """Codes and CLAP embeddings gathered into shards (`shard-NNNNN`, `clap-NNNNN`) and named in the index."""

    def __init__(self, out: Path, index: dict):
        self.out, self.index = out, index
        self.next_shard = {prefix: 1 + max((int(p.stem.split("-")[1]) for p in out.glob(f"{prefix}-*.safetensors")),
                                           default=-1) for prefix in ("shard", "clap")}
        self.codes: dict[str, torch.Tensor] = {}
        self.meta: dict[str, dict] = {}
        self.clap: dict[str, torch.Tensor] = {}

    def pending(self) -> int:
        return max(len(self.codes), len(self.clap))

    def _write_shard(self, prefix: str, tensors: dict[str, torch.Tensor]) -> str:
        name = f"{prefix}-{self.next_shard[prefix]:05d}.safetensors"
        with atomic_output(self.out / name) as tmp:
            save_file(dict(tensors), str(tmp))
        self.next_shard[prefix] += 1
        return name

    def flush(self) -> None:
        # Shards first, then the index that names them: a crash in between leaves only an unreferenced file.
        name = self._write_shard("shard", self.codes) if self.codes else None
        clap_name = self._write_shard("clap", self.clap) if self.clap else None
        for item_id, meta in self.meta.items():
            self.index["items"][item_id] = {**meta, "shard": name}
        for item_id in self.clap:
            self.index["items"][item_id]["clap_shard"] = clap_name
        self.codes.clear()
        self.meta.clear()
        self.clap.clear()
        _write_index(self.out, self.index)


def _code_meta(row: dict, codes: np.ndarray) -> dict:
    return {
        "lyrics": row.get("lyrics") or "", "tags": row.get("tags") or "",
        "language": row.get("language"), "split": row.get("split", "train"),
        "n_frames": int(codes.shape[1]), "duration": row.get("duration"),
        "timing": line_timing(row),
    }


def _tokenize_row(row: dict, cached: bool, codec, clap_model, shards: _ShardWriter, report: TokenizeReport) -> None:
    """Encode one row (unless `cached`) and embed it (with a CLAP model) into `shards`; an unreadable one is
    recorded as skipped."""
    try:
        audio, rate = load_audio(row["audio"])
        codes = None if cached else codec.encode(audio, rate)
        vector = None if clap_model is None else clap_model.embed_audio(audio, rate)
    except (HeartMuLaError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        shards.index["skipped"][row["id"]] = reason
        report.skipped[row["id"]] = reason
        return
    if not cached:
        if codes.max() >= np.iinfo(np.int16).max:
            raise HeartMuLaError(f"codec codebook of {codes.max() + 1}+ codes does not fit the int16 cache")
        shards.codes[row["id"]] = torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int16))
        shards.meta[row["id"]] = _code_meta(row, codes)
        report.encoded.append(row["id"])
        report.frames += int(codes.shape[1])
    if vector is not None:
        shards.clap[row["id"]] = torch.from_numpy(np.asarray(vector, dtype=np.float32)).contiguous()
        report.embedded.append(row["id"])


def tokenize_manifest(
    manifest: str | os.PathLike,
    codec_path: str | os.PathLike,
    out: str | os.PathLike,
    shard_items: int = 16,
    progress: bool = True,
    limit: int | None = None,
    clap: str | os.PathLike | None = None,
) -> TokenizeReport:
    """Encode every item of `manifest` with the codec into the cache folder `out` (created or resumed).

    With `clap` (a HeartCLAP model folder) every item also gets the CLAP audio embedding of its song, computed
    from the audio already loaded for the codec; cached items that lack one get it from their audio alone."""
    rows = read_manifest(manifest)
    if limit is not None:
        rows = rows[:limit]
    codec_dir = locate_codec(codec_path)
    fingerprint = codec_fingerprint(codec_dir)
    codec = load_codec(codec_dir)
    if not codec.can_encode:
        raise HeartMuLaError(f"codec {codec_dir} has no trained encoder; tokenize needs a codec that can encode "
                             "(train one with `heartmula train codec`)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = _cache_index(out, codec, codec_dir, fingerprint)
    clap_model = _open_clap(clap, index, out) if clap is not None else None
    index["skipped"] = {}  # unreadable items are retried on every run
    report = TokenizeReport()
    todo = [r for r in rows if r["id"] not in index["items"]
            or (clap_model is not None and "clap_shard" not in index["items"][r["id"]])]
    report.reused = sum(1 for r in rows if r["id"] in index["items"])
    for row in rows:  # caches written before (syllable) timings were kept get them without re-encoding
        meta, timing = index["items"].get(row["id"]), line_timing(row)
        if meta is not None and meta.get("timing") != timing:
            meta["timing"] = timing
    shards = _ShardWriter(out, index)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="tokenize", unit="item")
    for row in todo:
        cached = row["id"] in index["items"]  # only its CLAP embedding is missing
        _tokenize_row(row, cached, codec, clap_model, shards, report)
        if shards.pending() >= shard_items:
            shards.flush()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(skipped=len(report.skipped))
    shards.flush()
    if bar is not None:
        bar.close()
    return report


def line_timing(row: dict) -> list[dict]:
    """The sung lines of a manifest row as {text, start, end, syllables: [{text, start, end}]}."""
    def timed(entry: dict) -> dict:
        return {"text": entry["text"], "start": entry["start"], "end": entry["end"]}

    return [{**timed(line), "syllables": [timed(s) for s in line.get("syllables") or [] if s.get("text")]}
            for line in row.get("timing") or [] if line.get("text")]


def _open_clap(clap: str | os.PathLike, index: dict, out: Path):
    """Load the HeartCLAP model for the embeddings; refuse one that differs from the cache's embeddings' model."""
    folder = Path(clap)
    if not (folder / "config.json").is_file():
        raise HeartMuLaError(f"{folder} is not a HeartCLAP model folder (no config.json); pass --clap DIR of a "
                             "trained HeartCLAP, or --no-clap")
    fingerprint = codec_fingerprint(folder)  # the same hash of config + weights serves any model folder
    recorded = index.get("clap")
    if recorded and recorded["fingerprint"] != fingerprint:
        raise HeartMuLaError(f"{out} holds CLAP embeddings of another model ({recorded['path']}, fingerprint "
                             f"{recorded['fingerprint']}; this one {fingerprint}): pass --clap {recorded['path']}, "
                             "or --no-clap, or choose a new --out folder")
    model = load_clap(folder)
    index["clap"] = {"path": str(folder.resolve()), "fingerprint": fingerprint, "embed_dim": model.config.embed_dim}
    return model


@dataclass
class CachedItem:
    id: str
    codes: torch.Tensor  # long [K, T]
    lyrics: str
    tags: str
    language: str | None
    split: str
    reference: torch.Tensor | None = None  # float [embed_dim] CLAP audio embedding of the song, if the cache has it
    timing: list[dict] = field(default_factory=list)  # sung lines {text, start, end, syllables} (s), if known


def load_cache(cache: str | os.PathLike, split: str | None = None) -> tuple[dict, list[CachedItem]]:
    """(index, items) of a cache, optionally one split only; codes are loaded into memory (int16 is small)."""
    cache = Path(cache)
    index = read_index(cache)
    by_shard: dict[str, list[str]] = {}
    for item_id, meta in index["items"].items():
        if split is None or meta["split"] == split:
            by_shard.setdefault(meta["shard"], []).append(item_id)
    embeddings: dict[str, torch.Tensor] = {}
    for clap_shard in sorted({index["items"][i].get("clap_shard") for ids in by_shard.values() for i in ids} - {None}):
        embeddings.update(load_file(str(cache / clap_shard)))
    items = []
    for shard, ids in sorted(by_shard.items()):
        tensors = load_file(str(cache / shard))
        for item_id in ids:
            meta = index["items"][item_id]
            reference = embeddings[item_id].float() if meta.get("clap_shard") else None
            items.append(CachedItem(item_id, tensors[item_id].long(), meta["lyrics"], meta["tags"],
                                    meta["language"], meta["split"], reference, meta.get("timing") or []))
    items.sort(key=lambda item: item.id)
    return index, items
