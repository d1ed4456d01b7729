"""Tokens stay out of URLs and logs; credentials are checked before bodies are read; the page is locked down;
requests the model cannot honour are refused at submit time."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from serve_helpers import SONG, wait_for, wait_until
from starlette.websockets import WebSocketDisconnect

from heartmula.serve.app import STATIC_DIR

SESSION_COOKIE = "heartmula_session"

TOKEN = "s3cret-token-value"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(make_client):
    c = make_client(token=TOKEN, max_duration=600)
    wait_until(lambda: c.get("/api/health").json()["model"] == "ready", what="the model")
    return c


def test_the_page_never_puts_the_token_in_a_url():
    script = (STATIC_DIR / "app.js").read_text()
    assert "token=" not in script and "withToken" not in script
    assert "/api/session" in script


def test_a_session_cookie_opens_reads_and_the_stream_but_not_writes(client):
    job = client.post("/api/songs", json=SONG, headers=BEARER).json()
    audio = f"/api/songs/{job['id']}/audio"
    assert client.get(audio).status_code == 401
    opened = client.post("/api/session", headers=BEARER)
    assert opened.status_code == 204
    cookie = opened.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and TOKEN not in cookie
    assert wait_for(client, job["id"], timeout=60)["status"] == "done"  # polled with the cookie alone
    assert client.get(audio).status_code == 200  # the TestClient sends the cookie back, as a browser does
    assert client.post("/api/songs", json=SONG).status_code == 401  # a cookie never opens writes
    with client.websocket_connect("/api/stream") as ws:
        ws.send_json({"type": "update"})
        assert ws.receive_json()["type"] == "error"  # connected: it asks for a start message
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, "9999999999." + "0" * 64)
    assert client.get(audio).status_code == 401
    assert client.post("/api/session").status_code == 401  # the cookie cannot mint itself a new one


def test_websocket_origin_is_checked(client):
    client.post("/api/session", headers=BEARER)
    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/api/stream", headers={"Origin": "http://evil.example"}) as ws:
            ws.receive_json()
    with client.websocket_connect("/api/stream", headers={"Origin": "http://testserver"}) as ws:
        ws.send_json({"type": "update"})
        assert ws.receive_json()["type"] == "error"


def test_tokens_in_urls_are_redacted_from_the_access_log(server_factory, tmp_path):
    server = server_factory("--token", TOKEN, "--log-level", "info").start()
    assert httpx.get(f"{server.url}/api/songs", params={"token": TOKEN, "limit": 5}).status_code == 200
    from websockets.sync.client import connect

    with connect(server.url.replace("http://", "ws://") + f"/api/stream?token={TOKEN}") as ws:
        ws.send(json.dumps({"type": "update"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "error"
    server.stop()
    log = (tmp_path / "server.log").read_text()
    assert "/api/songs?" in log and "token=[redacted]" in log
    assert TOKEN not in log
    from heartmula.serve.auth import redact_token

    assert redact_token("/x?limit=5&token=abc&q=1") == "/x?limit=5&token=[redacted]&q=1"


def test_credentials_are_checked_before_the_body_is_read(client):
    app = client.app
    reads = []

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": b"x" * 65536, "more_body": True}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/transcribe", "raw_path": b"/api/transcribe",
             "query_string": b"", "headers": [(b"content-length", str(50 << 20).encode()),
                                             (b"content-type", b"multipart/form-data; boundary=x"),
                                             (b"host", b"testserver")],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80), "scheme": "http", "root_path": "",
             "http_version": "1.1", "app": app}
    asyncio.run(app.middleware_stack(scope, receive, send))
    assert sent[0]["status"] == 401 and reads == []


def test_the_page_carries_csp_and_frame_headers(client):
    page = client.get("/")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"


def test_allowed_hosts(make_client):
    c = make_client(allowed_hosts=["music.example", "testserver"])
    assert c.get("/api/health").status_code == 200
    assert c.get("/api/health", headers={"Host": "evil.example"}).status_code == 400


def test_a_nul_in_the_query_matches_nothing(client):
    assert client.post("/api/songs", json=SONG, headers=BEARER).status_code == 201
    listing = client.get("/api/songs", params={"q": "\x00"}, headers=BEARER).json()
    assert listing["total"] == 0
    assert client.get("/api/songs", params={"q": "river"}, headers=BEARER).json()["total"] >= 1


def test_requests_the_model_cannot_honour_are_refused_at_submit_time(client):
    short = client.post("/api/songs", json=dict(SONG, duration=0.5), headers=BEARER)
    assert short.status_code == 422 and "minimum of 1.0 s" in short.json()["detail"]
    tiny = client.post("/api/songs", json=dict(SONG, duration=1e-9), headers=BEARER)
    assert tiny.status_code == 422
    long = client.post("/api/songs", json=dict(SONG, duration=500.0), headers=BEARER)
    assert long.status_code == 422 and "at most" in long.json()["detail"], long.text
    most = float(long.json()["detail"].split("at most ")[1].split(" s")[0])
    fits = client.post("/api/songs", json=dict(SONG, duration=most), headers=BEARER)
    assert fits.status_code == 201, fits.text  # the figure named is one that fits
    huge = client.post("/api/songs", json=dict(SONG, lyrics="la la la\n" * 2200), headers=BEARER)
    assert huge.status_code == 422 and "shorten" in huge.json()["detail"], huge.text
    client.delete(f"/api/songs/{fits.json()['id']}", headers=BEARER)
