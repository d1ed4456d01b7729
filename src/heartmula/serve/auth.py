"""Who may call the API, and what the browser may do with the page.

- The bearer token (`Authorization: Bearer TOKEN`) opens every route. It is checked by an ASGI middleware before any
  body is read, so an unauthenticated upload is refused without the server reading it.
- The page does not put the token in URLs (they end up in access logs and browser history). It trades the token
  for a session cookie (POST /api/session): HttpOnly, SameSite=Strict, the HMAC of its expiry under a secret made
  at start-up. The cookie opens GET/HEAD routes (audio, downloads) and the WebSocket, not writes.
- `?token=` is still accepted for scripts; access-log lines have it replaced by `token=[redacted]`.
- The WebSocket checks its Origin (same host, or a --cors-origin); the page gets CSP and frame-ancestors headers.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

SESSION_COOKIE = "heartmula_session"
OPEN_PATHS = ("/api/health",)  # answered without a token: the page asks it whether it needs one
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data:; media-src 'self' blob:; object-src 'none'; "
                           "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
PAGE_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
_TOKEN_IN_URL = re.compile(r"((?:^|[?&])(?:token|access_token)=)[^&\s\"']*", re.IGNORECASE)


class Auth:
    """The bearer token (None = no auth) and the session cookies derived from it."""

    def __init__(self, token: str | None, session_seconds: float = 3600.0):
        self.token = token
        self.session_seconds = session_seconds
        self._secret = secrets.token_bytes(32)  # sessions end with the process

    @property
    def required(self) -> bool:
        return self.token is not None

    def _signature(self, expires: int) -> str:
        return hmac.new(self._secret, f"session:{expires}".encode(), hashlib.sha256).hexdigest()

    def new_session(self) -> tuple[str, int]:
        """(cookie value, max-age seconds)."""
        max_age = int(self.session_seconds)
        expires = int(time.time()) + max_age
        return f"{expires}.{self._signature(expires)}", max_age

    def session_valid(self, value: str) -> bool:
        expires, _, signature = value.partition(".")
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(signature.encode(), self._signature(int(expires)).encode())

    def token_valid(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def allows(self, scope) -> bool:
        """Bearer header, ?token=, or (reads and WebSocket only) a valid session cookie."""
        if self.token is None:
            return True
        headers = Headers(scope=scope)
        header = headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return self.token_valid(header[7:])
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if "token" in query:
            return self.token_valid(query["token"][0])
        if scope["type"] == "websocket" or scope.get("method") in ("GET", "HEAD"):
            cookie = SimpleCookie()
            try:
                cookie.load(headers.get("cookie", ""))
            except Exception:  # a malformed Cookie header is no session
                return False
            return SESSION_COOKIE in cookie and self.session_valid(cookie[SESSION_COOKIE].value)
        return False


class AuthMiddleware:
    """401 for /api/* without valid credentials, before the route (and its body parsing) runs."""

    def __init__(self, app, auth: Auth):
        self.app, self.auth = app, auth

    async def __call__(self, scope, receive, send):
        needs_auth = (scope["type"] in ("http", "websocket") and scope["path"].startswith("/api/")
                      and scope["path"] not in OPEN_PATHS and scope.get("method") != "OPTIONS")
        if not needs_auth or self.auth.allows(scope):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008, "reason": "missing or wrong token"})
        response = JSONResponse({"detail": "missing or wrong token: send Authorization: Bearer TOKEN"}, 401,
                                headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


class PageHeadersMiddleware:
    """CSP, frame-ancestors (and X-Frame-Options for older browsers), nosniff and no-referrer on every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=list(message.get("headers", [])) + PAGE_HEADERS)
            await send(message)

        await self.app(scope, receive, with_headers)


def origin_allowed(origin: str | None, host: str | None, cors_origins: list[str]) -> bool:
    """A WebSocket from a browser must come from this server's own page or a listed origin. Non-browser clients
    send no Origin and are judged by their token alone."""
    if not origin:
        return True
    if origin in cors_origins:
        return True
    return urlsplit(origin).netloc.lower() == (host or "").lower()


def redact_token(text: str) -> str:
    return _TOKEN_IN_URL.sub(r"\1[redacted]", text)


class RedactTokens(logging.Filter):
    """Replaces `token=...` in log records (uvicorn's access log holds the full URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_token(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact_token(record.msg)
        return True


def redact_tokens_in_logs(names: tuple[str, ...] = ("uvicorn.access", "uvicorn.error")) -> None:
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
