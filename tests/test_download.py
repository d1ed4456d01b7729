"""`heartmula download` with the real huggingface_hub client against a local stand-in of the hub (no network)."""

import json
import socket
import threading

import pytest
import torch
from hub_standin import HubStandIn, running_hub
from safetensors.torch import save_file

from heartmula.cli import main
from heartmula.codec.pretrained import write_random_codec
from heartmula.download import (
    CLAP_REPO,
    CODEC_RELEASES,
    GEN_REPO,
    LM_RELEASES,
    TRANSCRIBER_REPO,
    DownloadRequest,
    download,
    parse_revisions,
)
from heartmula.errors import HeartMuLaError
from heartmula.lm.pretrained import load_generator, write_random_root


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> HubStandIn:
    """Every official repository, holding tiny files in the official layout."""
    src = tmp_path_factory.mktemp("hub_src")
    hub = HubStandIn()
    for seed, (name, repo_id) in enumerate(LM_RELEASES.items()):
        model_dir = write_random_root(src / name, "tiny", seed=seed, max_shard_bytes=60_000)  # sharded, as upstream
        hub.add_folder(repo_id, model_dir)
    (src / "gen").mkdir()
    for name in ("tokenizer.json", "gen_config.json"):
        (src / "gen" / name).write_bytes((src / "base" / name).read_bytes())
    (src / "gen" / "README.md").write_text("not part of the layout\n")
    hub.add_folder(GEN_REPO, src / "gen")
    for seed, repo_id in enumerate(CODEC_RELEASES.values()):
        hub.add_folder(repo_id, write_random_codec(src / f"codec{seed}", "tiny", seed=seed))
    whisper = src / "whisper"
    whisper.mkdir()
    (whisper / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    save_file({"model.encoder.conv1.weight": torch.zeros(4, 2, 3)}, whisper / "model.safetensors")
    hub.add_folder(TRANSCRIBER_REPO, whisper)
    return hub


@pytest.fixture
def hf_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_ENABLE_HF_TRANSFER", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return monkeypatch


def test_download_assembles_a_root_that_generate_loads(hub, hf_env, tmp_path, capsys):
    root = tmp_path / "ckpt"
    with running_hub(hub) as endpoint:
        hf_env.setenv("HF_ENDPOINT", endpoint)
        assert main(["download", str(root), "--with-transcriber"]) == 0
    out = capsys.readouterr().out
    assert f"heartmula generate --model {root}" in out
    assert {p.name for p in root.iterdir()} >= {"tokenizer.json", "gen_config.json", "HeartMuLa-oss-3B",
                                                 "HeartCodec-oss", "HeartTranscriptor-oss"}
    assert not (root / "README.md").exists()  # only the two files of HeartMuLaGen
    shards = sorted(p.name for p in (root / "HeartMuLa-oss-3B").glob("*.safetensors"))
    assert len(shards) > 1 and (root / "HeartMuLa-oss-3B" / "model.safetensors.index.json").is_file()
    # the default LM release is the one fetched, byte for byte
    expected = hub.repos[LM_RELEASES["happy-new-year"]].files
    for name, data in expected.items():
        assert (root / "HeartMuLa-oss-3B" / name).read_bytes() == data, name
    song = tmp_path / "song.wav"
    assert main(["generate", "--model", str(root), "--tags", "pop", "--lyrics", "la la", "--duration", "1",
                 "--seed", "0", "--out", str(song), "--quiet"]) == 0
    assert song.stat().st_size > 44
    from heartmula import HeartMuLaPipeline

    made = HeartMuLaPipeline.from_pretrained(root)("la la", tags="pop", duration=1, seed=0)
    assert made.codes.shape[0] == 8 and made.audio.shape[-1] > 0


def test_second_run_fetches_nothing_and_revision_pins_a_commit(hub, hf_env, tmp_path):
    root = tmp_path / "ckpt"
    lm_repo = LM_RELEASES["rl"]
    with running_hub(hub) as endpoint:
        hf_env.setenv("HF_ENDPOINT", endpoint)
        request = DownloadRequest(root=root, lm="rl", revisions={lm_repo: hub.repos[lm_repo].sha})
        result = download(request, log=lambda line: None)
        assert {s.part.repo_id: s.commit for s in result.snapshots}[lm_repo] == hub.repos[lm_repo].sha
        hub.requests.clear()
        download(DownloadRequest(root=root, lm="rl"), log=lambda line: None)
        assert not [r for r in hub.requests if r.startswith("GET") and "/resolve/" in r]  # all files were there
        with pytest.raises(HeartMuLaError, match="has no revision 'v9'"):
            download(DownloadRequest(root=root, lm="rl", revisions={"*": "v9"}), log=lambda line: None)
    reference = load_generator(root).model.state_dict()
    assert all(torch.isfinite(t).all() for t in reference.values() if t.is_floating_point())


def test_token_from_the_environment_is_sent(hub, hf_env, tmp_path):
    hf_env.setenv("HF_TOKEN", "hf_standin_token")
    hub.authorizations.clear()
    with running_hub(hub) as endpoint:
        hf_env.setenv("HF_ENDPOINT", endpoint)
        download(DownloadRequest(root=tmp_path / "ckpt"), log=lambda line: None)
    assert hub.authorizations == {"Bearer hf_standin_token"}


def test_dropped_connection_resumes_where_it_stopped(hub, hf_env, tmp_path):
    import huggingface_hub.constants

    # The client writes what it received in chunks of this size; the default (10 MB) exceeds a tiny shard.
    hf_env.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    root = tmp_path / "ckpt"
    repo = hub.repos[LM_RELEASES["happy-new-year"]]
    shard = sorted(name for name in repo.files if name.endswith(".safetensors"))[0]
    hub.cut_once.add(shard)
    hub.ranges.clear()
    with running_hub(hub) as endpoint:
        hf_env.setenv("HF_ENDPOINT", endpoint)
        try:
            download(DownloadRequest(root=root), log=lambda line: None)
        except HeartMuLaError as exc:  # if the client gives up, the next run resumes
            assert "run the same command again" in str(exc)
            download(DownloadRequest(root=root), log=lambda line: None)
    assert len(hub.ranges) == 1 and hub.ranges[0].startswith(f"{shard}: bytes=")
    resumed_at = int(hub.ranges[0].split("=")[1].rstrip("-"))
    assert 0 < resumed_at <= len(repo.files[shard]) // 2  # only what was missing was fetched again
    assert (root / "HeartMuLa-oss-3B" / shard).read_bytes() == repo.files[shard]
    load_generator(root)


def test_truncated_file_is_named_by_the_loader(hub, hf_env, tmp_path):
    root = tmp_path / "ckpt"
    with running_hub(hub) as endpoint:
        hf_env.setenv("HF_ENDPOINT", endpoint)
        download(DownloadRequest(root=root), log=lambda line: None)
    index = json.loads((root / "HeartMuLa-oss-3B" / "model.safetensors.index.json").read_text())
    shard = root / "HeartMuLa-oss-3B" / sorted(set(index["weight_map"].values()))[0]
    shard.write_bytes(shard.read_bytes()[:1000])  # cut short by something other than the client
    with pytest.raises(HeartMuLaError, match=f"{shard}.*truncated or corrupt"):
        load_generator(root)


def test_folder_from_another_release_is_refused(hub, hf_env, tmp_path):
    root = tmp_path / "ckpt"
    (root / "HeartMuLa-oss-3B").mkdir(parents=True)
    (root / "HeartMuLa-oss-3B" / "model.safetensors").write_bytes(b"older release")
    with running_hub(hub) as endpoint:
        hf_env.setenv("HF_ENDPOINT", endpoint)
        with pytest.raises(HeartMuLaError, match="model.safetensors, which .* does not have"):
            download(DownloadRequest(root=root), log=lambda line: None)


def test_missing_repository_is_a_clear_error(hub, hf_env, tmp_path, capsys):
    with running_hub(hub) as endpoint:
        hf_env.setenv("HF_ENDPOINT", endpoint)
        assert main(["download", str(tmp_path / "ckpt"), "--with-clap"]) == 2
    err = capsys.readouterr().err
    assert f"{CLAP_REPO} is not on {endpoint}" in err and "Traceback" not in err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_fails_with_the_manual_commands(hf_env, tmp_path, capsys):
    hf_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert main(["download", str(tmp_path / "ckpt"), "--lm", "base"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Hugging Face Hub" in err and "Traceback" not in err
    assert f"hf download {LM_RELEASES['base']} --local-dir {tmp_path / 'ckpt' / 'HeartMuLa-oss-3B'}" in err
    assert f"hf download {GEN_REPO} tokenizer.json gen_config.json --local-dir {tmp_path / 'ckpt'}" in err
    assert not (tmp_path / "ckpt").exists()


def test_unreachable_hub_is_asked_once_without_retries(hf_env, tmp_path):
    """Fails fast: a hub that drops every connection gets one attempt, not a retry loop."""
    attempts = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.settimeout(0.2)

        def drop_connections():
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except OSError:
                    continue
                attempts.append(1)
                conn.close()

        stop = threading.Event()
        thread = threading.Thread(target=drop_connections, daemon=True)
        thread.start()
        hf_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        try:
            with pytest.raises(HeartMuLaError, match="cannot reach the Hugging Face Hub"):
                download(DownloadRequest(root=tmp_path / "ckpt"), log=lambda line: None)
        finally:
            stop.set()
            thread.join()
    assert len(attempts) == 1


def test_revision_arguments():
    repos = [GEN_REPO, LM_RELEASES["base"]]
    assert parse_revisions(["v1"], repos) == {"*": "v1"}
    assert parse_revisions(["HeartMuLa-oss-3B=abc"], repos) == {LM_RELEASES["base"]: "abc"}
    assert parse_revisions([f"{GEN_REPO}=main"], repos) == {GEN_REPO: "main"}
    with pytest.raises(HeartMuLaError, match="does not fetch"):
        DownloadRequest(revisions={"Someone/else": "main"}).parts()
