"""Songs of a manifest as (tags, lyrics, cached log-mel + chroma) items, and their whole-song embeddings.

Features are computed once per song with the model's own front end and kept as float16 .npz files in a cache
folder named after the front-end settings (a model with other settings gets its own cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from heartmula.audio import load_audio
from heartmula.clap.config import HeartCLAPConfig
from heartmula.clap.model import HeartCLAP
from heartmula.clap.prompts import normalise_tag
from heartmula.errors import HeartMuLaError
from heartmula.files import atomic_output
from heartmula.manifest import parse_tags


@dataclass
class Item:
    id: str
    tags: frozenset[str]
    tag_list: list[str]
    lyrics: str
    mel: np.ndarray  # [n_mels, T] float16
    chroma: np.ndarray  # [12, T] float16
    # Tag categories the item's tags settle (None: all of them, as for corpus songs whose tags are complete). A real
    # recording labelled only "instrumental" settles vocal and language, not genre or key.
    known: frozenset[str] | None = None
    vocals: str | None = None  # path of the item's vocal stem, if the manifest has one


def _cache_key(config: HeartCLAPConfig) -> str:
    c = config
    return (f"sr{c.sample_rate}-fft{c.n_fft}-hop{c.hop_length}-mel{c.n_mels}-{c.f_min:g}-{c.f_max:g}"
            f"-chroma{c.chroma_n_fft}-{c.chroma_f_min:g}-{c.chroma_f_max:g}")


def load_items(rows: list[dict], model: HeartCLAP, cache_dir: Path, progress: bool = True) -> tuple[list, list]:
    """Feature-cached items for rows with tags; unreadable audio is skipped and reported."""
    from tqdm import tqdm

    cache = cache_dir / _cache_key(model.config)
    cache.mkdir(parents=True, exist_ok=True)
    items, skipped = [], []
    for row in tqdm(rows, desc="features", disable=not progress):
        tags = [normalise_tag(t) for t in parse_tags(row.get("tags") or "")]
        if not tags:
            skipped.append((row["id"], "no tags"))
            continue
        path = cache / f"{row['id']}.npz"
        if not path.is_file():
            try:
                audio, rate = load_audio(row["audio"], sample_rate=model.config.sample_rate, channels=1)
            except HeartMuLaError as exc:
                skipped.append((row["id"], str(exc)))
                continue
            mel, chroma = model.features(audio, rate)
            with atomic_output(path) as tmp:
                np.savez(tmp, mel=mel.cpu().numpy().astype(np.float16), chroma=chroma.cpu().numpy().astype(np.float16))
        with np.load(path, allow_pickle=False) as data:
            known = frozenset(row["known"]) if row.get("known") is not None else None
            items.append(Item(row["id"], frozenset(tags), tags, row.get("lyrics") or "", data["mel"],
                              data["chroma"], known, row.get("vocals")))
    return items, skipped


def embed_items(model: HeartCLAP, items: list[Item]) -> np.ndarray:
    return np.stack([model.embed_features(torch.from_numpy(it.mel.astype(np.float32)),
                                          torch.from_numpy(it.chroma.astype(np.float32))) for it in items])
