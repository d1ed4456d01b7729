"""`heartmula index add/list/remove/reindex`, `search`, `similar`, `tag` on a tiny model and synthetic songs."""

from __future__ import annotations

import json

from heartmula.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_index_search_similar_tag_round_trip(tiny_clap_dir, synthetic_corpus, tmp_path, capsys):
    music = synthetic_corpus / "audio"
    index = tmp_path / "ix"
    code, out, _ = run(capsys, "index", "add", music, "--index", index, "--model", tiny_clap_dir, "--quiet")
    assert code == 0
    assert "skipped" in out and "broken.flac" in out  # the bad file is reported, the rest indexed
    assert "added 10, updated 0, unchanged 0, skipped 1" in out
    code, out, _ = run(capsys, "index", "add", music, "--index", index, "--model", tiny_clap_dir, "--quiet")
    assert "added 0, updated 0, unchanged 10" in out  # nothing changed: nothing embedded again

    code, out, _ = run(capsys, "search", "slow calm piano", "--index", index, "--model", tiny_clap_dir, "-k", "3",
                       "--json")
    hits = json.loads(out)
    assert code == 0 and len(hits) == 3 and hits[0]["score"] >= hits[-1]["score"]
    # a query in another language runs against the same index
    code, out, _ = run(capsys, "search", "慢速平静的钢琴", "--index", index, "--model", tiny_clap_dir, "--json")
    assert code == 0 and len(json.loads(out)) == 10

    song = (music / "s3.flac").resolve()
    code, out, _ = run(capsys, "similar", song, "--index", index, "--model", tiny_clap_dir, "--json")
    paths = [h["path"] for h in json.loads(out)]
    assert code == 0 and str(song) not in paths and len(paths) == 9

    code, out, _ = run(capsys, "index", "remove", music / "s0.flac", "--index", index)
    assert "removed 1" in out
    code, out, _ = run(capsys, "index", "list", "--index", index, "--json")
    listed = json.loads(out)
    assert len(listed) == 9 and all(not t["path"].endswith("s0.flac") for t in listed)

    code, out, _ = run(capsys, "index", "reindex", "--index", index, "--model", tiny_clap_dir, "--quiet")
    assert "updated 9" in out

    code, out, _ = run(capsys, "tag", music / "s1.flac", music / "broken.flac", "--model", tiny_clap_dir,
                       "--tags", "piano,drums,organ", "--json")
    result = json.loads(out[out.index("{"):])
    assert code == 0 and [r["tag"] for r in result[str(music / "s1.flac")]].__len__() == 3
    assert "skipped" in out and "broken.flac" in out


def test_empty_and_missing_index(tiny_clap_dir, tmp_path, capsys):
    empty = tmp_path / "music"
    empty.mkdir()
    code, out, _ = run(capsys, "index", "add", empty, "--index", tmp_path / "ix", "--model", tiny_clap_dir)
    assert code == 0 and "0 tracks" in out
    code, out, _ = run(capsys, "search", "anything", "--index", tmp_path / "ix", "--model", tiny_clap_dir)
    assert code == 0 and "no results" in out
    code, _, err = run(capsys, "search", "anything", "--index", tmp_path / "none", "--model", tiny_clap_dir)
    assert code == 2 and "no index" in err


def test_help_of_every_verb(capsys):
    for verb in (["index", "add"], ["index", "remove"], ["index", "list"], ["index", "reindex"], ["search"],
                 ["similar"], ["tag"], ["train", "clap"], ["eval", "clap"]):
        try:
            main([*verb, "--help"])
        except SystemExit as exc:
            assert exc.code == 0
        assert "--" in capsys.readouterr().out
