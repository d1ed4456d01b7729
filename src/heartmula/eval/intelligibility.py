"""How well the project's transcriber understands the corpus' own sung vocals, per language.

This is the ceiling for lyric intelligibility of any model trained on the corpus: a model cannot sing more
clearly than its training data. It transcribes the vocal stems (no accompaniment) of a fixed sample of items with
the default transcriber (`heartmula.transcribe`) and scores them with the project's lyrics recipe
(`heartmula.eval.lyrics`: WER, CER; ja CER on kana readings, zh after traditional->simplified).
"""

from __future__ import annotations

from collections import defaultdict

from heartmula.data.lyrics import LANGUAGES
from heartmula.eval.lyrics import score_pair
from heartmula.transcribe.pipeline import TranscribeConfig, Transcriber


def sample_vocal_rows(rows: list[dict], per_language: int) -> list[dict]:
    """The first `per_language` sung items of each language in id order (deterministic), both voices mixed."""
    chosen: dict[str, list[dict]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r["id"]):
        language = row.get("language")
        if row.get("vocals") and row.get("lyrics") and language in LANGUAGES and len(chosen[language]) < per_language:
            chosen[language].append(row)
    return [row for language in LANGUAGES for row in chosen[language]]


def measure_intelligibility(rows: list[dict], per_language: int = 6, model: str | None = None,
                            progress: bool = True) -> dict:
    """{language: {items, seconds, wer, cer, by_gender: {...}}} over a sample of sung stems.

    `rows` must have absolute audio paths (`read_manifest(..., absolute_paths=True)`)."""
    from tqdm import tqdm

    sample = sample_vocal_rows(rows, per_language)
    transcribers: dict[str, Transcriber] = {}
    totals: dict[tuple[str, str], dict] = defaultdict(lambda: {"items": 0, "seconds": 0.0, "wer": None, "cer": None})
    examples: dict[str, list[dict]] = defaultdict(list)
    for row in tqdm(sample, desc="transcribing sung stems", unit="song", disable=not progress):
        language = row["language"]
        if language not in transcribers:
            transcribers[language] = Transcriber(TranscribeConfig(model=model, language=language))
        transcript = transcribers[language].transcribe(row["vocals"])
        counts = score_pair(row["lyrics"], transcript.text, language, phonemes=False)
        gender = row.get("vocal_gender") or "unknown"
        for key in ((language, "all"), (language, gender)):
            entry = totals[key]
            entry["items"] += 1
            entry["seconds"] += row["duration"]
            for kind in ("wer", "cer"):
                entry[kind] = counts[kind] if entry[kind] is None else entry[kind] + counts[kind]
        if len(examples[language]) < 2:
            examples[language].append({"id": row["id"], "reference": row["timing"][0]["text"] if row["timing"]
                                       else "", "hypothesis": transcript.text[:200]})
    result: dict[str, dict] = {}
    for (language, group), entry in sorted(totals.items()):
        summary = {"items": entry["items"], "seconds": round(entry["seconds"], 1),
                   "wer": round(entry["wer"].rate, 4), "cer": round(entry["cer"].rate, 4)}
        if group == "all":
            result.setdefault(language, {}).update(summary)
            result[language]["examples"] = examples[language]
        else:
            result.setdefault(language, {}).setdefault("by_gender", {})[group] = summary
    return result


def intelligibility_markdown(result: dict, model_name: str = "the default transcriber") -> str:
    lines = ["## Transcriber error on the corpus' own sung vocals (intelligibility ceiling)", "",
             f"Vocal stems transcribed by {model_name} with the language given, scored with the lyrics recipe "
             "(`heartmula.eval.lyrics`; zh/ja WER is on characters).", "",
             "| language | items | minutes | WER | CER | female CER | male CER |", "|---|---|---|---|---|---|---|"]
    for language in LANGUAGES:
        if language not in result:
            continue
        r = result[language]
        by_gender = r.get("by_gender", {})
        female = by_gender.get("female", {}).get("cer")
        male = by_gender.get("male", {}).get("cer")
        lines.append(f"| {language} | {r['items']} | {r['seconds'] / 60:.1f} | {r['wer']:.2f} | {r['cer']:.2f} | "
                     f"{'' if female is None else f'{female:.2f}'} | {'' if male is None else f'{male:.2f}'} |")
    return "\n".join(lines) + "\n"
