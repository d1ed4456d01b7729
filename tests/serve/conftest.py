"""Tiny random-weight models, in-process apps (TestClient) and real `heartmula serve` subprocesses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from serve_helpers import ServerProcess

from heartmula.codec.pretrained import write_random_codec
from heartmula.lm.pretrained import write_random_root


@pytest.fixture(scope="session")
def model_root(tmp_path_factory) -> Path:
    """An official-layout root: tiny LM (HeartMuLa-oss-3B/, tokenizer, gen_config) and tiny HeartCodec-oss/.

    HEARTMULA_SERVE_TESTS_WITH_DEFAULTS=1 lays the shipped default LM and codec out that way instead (links), to run
    the same tests, the browser ones included, against the models a fresh install serves (slower)."""
    root = tmp_path_factory.mktemp("models")
    if os.environ.get("HEARTMULA_SERVE_TESTS_WITH_DEFAULTS") == "1":
        from heartmula.codec.pretrained import DEFAULT_CODEC_DIR
        from heartmula.song_models import DEFAULT_LM_DIR

        (root / "HeartMuLa-oss-3B").mkdir()
        for name in ("config.json", "model.safetensors"):
            (root / "HeartMuLa-oss-3B" / name).symlink_to(DEFAULT_LM_DIR / name)
        for name in ("tokenizer.json", "gen_config.json"):
            (root / name).symlink_to(DEFAULT_LM_DIR / name)
        (root / "HeartCodec-oss").symlink_to(DEFAULT_CODEC_DIR)
        return root
    write_random_root(root, "tiny", seed=0)
    write_random_codec(root / "HeartCodec-oss", "tiny", seed=0)
    return root


@pytest.fixture
def make_client(model_root, tmp_path):
    """make_client(**ServeConfig fields, load_models=None) -> a started TestClient (lifespan runs the worker)."""
    from fastapi.testclient import TestClient

    from heartmula.serve import ServeConfig, create_app

    clients = []

    def make(load_models=None, data_dir=None, **fields):
        config = ServeConfig(data_dir=data_dir or tmp_path / "data", model=model_root, **fields)
        client = TestClient(create_app(config, load_models=load_models))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture(scope="session")
def live_server(model_root, tmp_path_factory):
    """One real server shared by the concurrency and browser tests."""
    folder = tmp_path_factory.mktemp("live")
    server = ServerProcess(model_root, folder / "data", folder / "server.log").start()
    yield server
    server.stop()


@pytest.fixture
def server_factory(model_root, tmp_path):
    servers = []

    def make(*extra: str) -> ServerProcess:
        server = ServerProcess(model_root, tmp_path / "data", tmp_path / "server.log", *extra)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
