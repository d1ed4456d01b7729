"""Licences where a user sees them: the LICENSE file, the default models' card headers and `heartmula model info`."""

import json
import re
from pathlib import Path

import pytest

from heartmula.cards import DEFAULT_MODEL_DIRS, card_metadata, license_line, parse_front_matter
from heartmula.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_code_license_is_the_apache_2_text():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


@pytest.mark.parametrize("name", sorted(DEFAULT_MODEL_DIRS))
def test_default_cards_carry_a_hub_header_and_their_terms(name):
    folder = DEFAULT_MODEL_DIRS[name]
    meta = card_metadata(folder)
    assert meta["license"] == "other" and meta["license_name"] == "heartmula-research-non-commercial"
    terms = folder / meta["license_link"]
    assert "non-commercial" in terms.read_text()
    assert set(meta["language"]) == {"en", "zh", "ja", "ko", "es"}
    assert "heartmula" in meta["tags"] and meta["training_data"]
    assert license_line(folder) == f"other: heartmula-research-non-commercial (terms: {terms})"
    card = (folder / "MODEL_CARD.md").read_text()
    body = card.split("\n---\n", 1)[1]
    assert body.lstrip().startswith("# ")  # the card itself follows the header unchanged
    diary = re.findall(r"\b20\d\d-\d\d-\d\d\b|\bsession\b|this machine|this commit|only configuration tried", card)
    assert not diary


def test_front_matter_reader():
    text = '---\nlicense: apache-2.0\n# a comment\ntags:\n- a\n- "b: c"\nextra:\n  nested: skipped\n---\n# Title\n'
    assert parse_front_matter(text) == {"license": "apache-2.0", "tags": ["a", "b: c"], "extra": []}
    assert parse_front_matter("# no header\n") == {}
    assert parse_front_matter("---\nlicense: mit\n") == {}  # never closed


def test_model_info_prints_the_licence(tmp_path, capsys):
    assert main(["model", "info"]) == 0
    captured = capsys.readouterr()
    info = json.loads(captured.out)
    assert info["license"].startswith("other: heartmula-research-non-commercial")
    assert set(info["default_model_licenses"]) == {"lm", "codec", "clap"} and info["code_license"] == "Apache-2.0"
    assert "research and non-commercial use only" in captured.err
    root = tmp_path / "root"
    assert main(["model", "init", str(root)]) == 0
    (root / "HeartMuLa-oss-3B" / "README.md").write_text("---\nlicense: apache-2.0\n---\n# An official release\n")
    capsys.readouterr()
    assert main(["model", "info", str(root)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["license"] == "apache-2.0" and "default_model_licenses" not in info
