"""Corpus building: real scores rendered offline with sung lyrics in five languages, bring-your-own imports,
JSONL manifests and data cards. Heavy libraries (music21, pyworld, espeak-ng) load only when used."""

from heartmula.manifest import read_manifest, write_manifest

__all__ = ["read_manifest", "write_manifest"]
