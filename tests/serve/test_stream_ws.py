"""WS /api/stream: live audio chunks, control messages while it plays, bad messages, saving to the library."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from starlette.websockets import WebSocketDisconnect

pytest.importorskip("heartmula.stream")


@pytest.fixture(scope="module")
def client(model_root, tmp_path_factory):
    from fastapi.testclient import TestClient

    from heartmula.serve import ServeConfig, create_app

    app = create_app(ServeConfig(data_dir=tmp_path_factory.mktemp("ws"), model=model_root, token="tok",
                                 max_stream_seconds=20))
    with TestClient(app) as c:
        c.headers["Authorization"] = "Bearer tok"
        while c.get("/api/health").json()["model"] != "ready":
            pass
        yield c


START = {"type": "start", "lyrics": "[verse]\nla la", "prompts": [["jazz,piano", 0.7], ["electronic", 0.3]],
         "seed": 7, "max_seconds": 2.0, "title": "live test"}


def messages_until_end(ws, channels: int) -> tuple[list[np.ndarray], list[dict]]:
    chunks, texts = [], []
    while True:
        message = ws.receive()
        if message.get("bytes") is not None:
            chunks.append(np.frombuffer(message["bytes"], dtype="<f4").reshape(channels, -1))
        elif message.get("text") is not None:
            texts.append(json.loads(message["text"]))
            if texts[-1]["type"] == "end":
                return chunks, texts
        else:
            raise AssertionError(f"socket closed before the end: {message}")


def test_stream_plays_takes_controls_and_is_saved(client, model_root):
    from heartmula.codec.pretrained import load_codec

    channels = load_codec(model_root).config.audio_channels
    assert client.get("/api/health").json()["features"]["stream"] is True
    with client.websocket_connect("/api/stream?token=tok") as ws:
        ws.send_json(dict(START, max_seconds=8.0))  # paced near real time: long enough to steer it
        started = ws.receive_json()
        assert started["type"] == "started" and started["channels"] == channels and started["seed"] == 7
        chunks = [np.frombuffer(ws.receive_bytes(), dtype="<f4").reshape(channels, -1)]
        ws.send_json({"type": "update", "prompts": [["jazz,piano", 0.1], ["electronic", 0.9]], "temperature": 0.8})
        ws.send_json({"type": "update", "temperature": -1})  # refused; the stream goes on
        ws.send_json({"type": "update", "prompts": [["jazz", 0.0]]})  # all-zero weights: refused
        ws.send_text("not json")
        ws.send_json({"type": "dance"})
        replies = []
        while len(replies) < 5:
            message = ws.receive()
            if message.get("bytes") is not None:
                chunks.append(np.frombuffer(message["bytes"], dtype="<f4").reshape(2, -1))
            else:
                replies.append(json.loads(message["text"]))
        ws.send_json({"type": "stop"})
        more, texts = messages_until_end(ws, channels)
    kinds = [r["type"] for r in replies]
    assert kinds.count("updated") == 1 and kinds.count("error") == 4, replies
    errors = [r["message"] for r in replies if r["type"] == "error"]
    assert any("temperature" in e for e in errors) and any("JSON" in e for e in errors)
    audio = np.concatenate(chunks + more, axis=1)
    end = texts[-1]
    assert end["seconds"] == pytest.approx(audio.shape[1] / started["sample_rate"], abs=1e-3)
    assert 0 < end["seconds"] < 8.0  # stopped early

    song = client.get(f"/api/songs/{end['song']}").json()
    assert song["kind"] == "stream" and song["status"] == "done" and song["title"] == "live test"
    saved = client.get(f"/api/songs/{end['song']}/audio")
    import io

    import soundfile as sf

    data, rate = sf.read(io.BytesIO(saved.content), always_2d=True)
    assert rate == started["sample_rate"] and data.shape[0] == audio.shape[1]
    assert np.abs(data.T - np.clip(audio, -1, 1)).max() < 1e-3  # 16-bit WAV of what was streamed
    codes = client.get(f"/api/songs/{end['song']}/codes")
    assert codes.status_code == 200


def test_stream_refuses_bad_starts_and_wrong_tokens(client):
    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/api/stream", headers={"Authorization": "Bearer wrong"}) as ws:
            ws.receive_json()
    with client.websocket_connect("/api/stream?token=tok") as ws:
        ws.send_json({"type": "update", "temperature": 1.0})
        assert "start" in ws.receive_json()["message"]
        ws.send_json(dict(START, max_seconds=999))
        assert "limit" in ws.receive_json()["message"]
        ws.send_json(dict(START, prompts="jazz"))
        assert ws.receive_json()["type"] == "error"
        ws.send_json(dict(START, max_seconds=0.5, save=False))
        assert ws.receive_json()["type"] == "started"
        ws.send_json({"type": "stop"})
        while (message := ws.receive())["type"] != "websocket.close":
            if message.get("text") and '"end"' in message["text"]:
                assert json.loads(message["text"])["song"] is None  # save=False: nothing kept
                break


def test_a_listener_leaving_mid_stream_frees_the_server(live_server):
    """Against a real server process: a client that just closes its socket (no stop message)."""
    import httpx
    from websockets.sync.client import connect

    ws_url = live_server.url.replace("http://", "ws://") + "/api/stream"
    with connect(ws_url) as ws:
        ws.send(json.dumps(dict(START, max_seconds=20.0, title="left early")))
        assert json.loads(ws.recv(timeout=60))["type"] == "started"
        assert isinstance(ws.recv(timeout=60), bytes)
    # What was heard is kept, and the model is free again for jobs and new streams. The stream is listed while it
    # runs; the server finishes it once it notices the closed socket.
    for _ in range(400):
        listing = httpx.get(live_server.url + "/api/songs", params={"q": "left early"}).json()
        if listing["total"] and listing["songs"][0]["status"] != "running":
            break
        time.sleep(0.05)
    saved = listing["songs"][0]
    assert saved["kind"] == "stream" and saved["status"] == "done" and 0 < saved["result"]["seconds"] < 20.0
    with connect(ws_url) as ws:
        ws.send(json.dumps(dict(START, max_seconds=0.5, save=False)))
        messages = []
        while not (messages and isinstance(messages[-1], dict) and messages[-1]["type"] == "end"):
            message = ws.recv(timeout=60)
            messages.append(json.loads(message) if isinstance(message, str) else message)
    assert messages[0]["type"] == "started" and any(isinstance(m, bytes) for m in messages)


def test_a_stream_frees_its_slot_before_it_is_saved(client, monkeypatch):
    from heartmula.serve import live

    services, slots_while_saving = client.app.state.services, []
    save = live._save

    def recording_save(*args):
        slots_while_saving.append(services.live_streams)
        return save(*args)

    monkeypatch.setattr(live, "_save", recording_save)
    with client.websocket_connect("/api/stream?token=tok") as ws:
        ws.send_json(dict(START, max_seconds=1.0))
        started = ws.receive_json()
        messages_until_end(ws, started["channels"])
    assert slots_while_saving == [0]  # the model was free and the slot given back before the save began
