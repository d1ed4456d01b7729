"""The README's Python quickstart runs as written, with the embedded default models."""

import re
import runpy
from pathlib import Path

import soundfile as sf

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_python_quickstart_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 1, "the README has one Python quickstart"
    script = tmp_path / "quickstart.py"
    script.write_text(blocks[0], encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script))
    info = sf.info(str(tmp_path / "song.wav"))
    assert info.samplerate == 24000 and info.frames > 0
    assert capsys.readouterr().out.count("(1, ") >= 1  # the stream printed its chunks' shapes
