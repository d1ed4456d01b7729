"""POST /api/transcribe with the embedded tiny.en on real speech made by espeak-ng."""

from __future__ import annotations

import shutil
import subprocess

import pytest


@pytest.fixture(scope="module")
def client(model_root, tmp_path_factory):
    from fastapi.testclient import TestClient

    from heartmula.serve import ServeConfig, create_app

    app = create_app(ServeConfig(data_dir=tmp_path_factory.mktemp("tr"), model=model_root, transcribe_model="tiny.en"))
    with TestClient(app) as c:
        yield c


def test_upload_gives_timed_lyrics(client, tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: run `bash scripts/setup.sh`")
    speech = tmp_path / "line.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(speech),
                    "Every morning I walk along the river."], check=True)
    response = client.post("/api/transcribe", files={"file": ("line.wav", speech.read_bytes(), "audio/wav")},
                           data={"language": "en"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["language"] == "en" and result["duration"] > 1.0
    text = result["text"].lower()
    assert "river" in text and "morning" in text
    line = result["segments"][0]
    assert 0 <= line["start"] < line["end"] <= result["duration"] + 0.5 and line["words"]
    assert result["lrc"].startswith("[la:en]") and "river" in result["lrc"].lower()
