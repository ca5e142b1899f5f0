"""A small user-management REST API, served for the REST connector's tests.

RabbitMQ (the real target the connector is tested against) has no paging and only basic
authentication. This app covers what it lacks: lists paged by page number, offset, cursor and
``Link`` header, OAuth2 client credentials (tokens that expire and can be revoked), bearer and
basic authentication, and queued failures (a status with headers) to check error mapping.
It keeps users, groups and sessions in memory; ``serve()`` runs it on a free loopback port.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import threading
import time
from collections import deque
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

MAX_PAGE = 100


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class Reply(Exception):
    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None):
        self.status = status
        self.body = body
        self.headers = headers or {}


class SampleApp:
    """``auth``: ``basic`` (``username``/``password``), ``bearer`` (``token``) or ``oauth2``
    (``client_id``/``client_secret`` at ``POST /oauth/token``, tokens living ``token_life``
    seconds)."""

    def __init__(
        self,
        auth: str = "basic",
        *,
        username: str = "api",
        password: str = "api-password",
        token: str = "static-token",
        client_id: str = "provisor",
        client_secret: str = "client-secret",
        token_life: float = 3600,
        groups: tuple[str, ...] = ("dev", "ops"),
    ) -> None:
        self.auth = auth
        self.username, self.password, self.token = username, password, token
        self.client_id, self.client_secret = client_id, client_secret
        self.token_life = token_life
        self.tokens: dict[str, float] = {}  # access token -> expiry
        self.tokens_issued = 0
        self.users: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, set[str]] = {g: set() for g in groups}
        self.sessions: dict[str, int] = {}
        self.faults: deque[tuple[int, dict[str, str], Any]] = deque()
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._ids = itertools.count(1000)
        self._server: _Server | None = None
        self.url = ""

    # --- control from tests --------------------------------------------------------------

    def fail_next(self, status: int, headers: dict[str, str] | None = None, body: Any = None):
        self.faults.append((status, headers or {}, body))

    def revoke_tokens(self) -> None:
        self.tokens.clear()

    def seed(self, count: int, prefix: str = "seed") -> None:
        self.add_users([f"{prefix}{n}" for n in range(count)])

    def add_users(self, names: list[str]) -> None:
        with self.lock:
            for name in names:
                uid = str(next(self._ids))
                self.users[uid] = self._user(uid, name, {})

    def open_session(self, uid: str) -> None:
        with self.lock:
            self.sessions[uid] = self.sessions.get(uid, 0) + 1

    # --- serving -------------------------------------------------------------------------

    def serve(self) -> SampleApp:
        self._server = make_server("127.0.0.1", 0, self, _Server, _Quiet)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        serve = self._server.serve_forever
        threading.Thread(target=serve, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> SampleApp:
        return self.serve()

    def __exit__(self, *args: Any) -> None:
        self.close()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        self.requests.append((method, path))
        try:
            if path == "/oauth/token":
                raise Reply(*self._token(environ, raw))
            self._authenticate(environ)
            if self.faults:
                status, headers, body = self.faults.popleft()
                raise Reply(status, body if body is not None else {"error": "injected"}, headers)
            body = json.loads(raw) if raw else None
            with self.lock:
                raise Reply(*self._route(method, path.strip("/").split("/"), query, body))
        except Reply as reply:
            headers = [("Content-Type", "application/json"), *reply.headers.items()]
            payload = b"" if reply.body is None else json.dumps(reply.body).encode()
            start_response(f"{reply.status} X", headers)
            return [payload]

    # --- authentication ------------------------------------------------------------------

    def _token(self, environ: dict[str, Any], raw: bytes) -> tuple[int, Any]:
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        client = (form.get("client_id"), form.get("client_secret"))
        header = environ.get("HTTP_AUTHORIZATION", "")
        if header.startswith("Basic "):
            user, _, secret = base64.b64decode(header[6:]).decode().partition(":")
            client = (user, secret)
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        if client != (self.client_id, self.client_secret):
            return 401, {"error": "invalid_client"}
        token = secrets.token_urlsafe(16)
        self.tokens[token] = time.monotonic() + self.token_life
        self.tokens_issued += 1
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": self.token_life}

    def _authenticate(self, environ: dict[str, Any]) -> None:
        header = environ.get("HTTP_AUTHORIZATION", "")
        ok = False
        if self.auth == "basic" and header.startswith("Basic "):
            ok = base64.b64decode(header[6:]).decode() == f"{self.username}:{self.password}"
        elif self.auth == "bearer":
            ok = header == f"Bearer {self.token}"
        elif self.auth == "oauth2" and header.startswith("Bearer "):
            ok = self.tokens.get(header[7:], 0) > time.monotonic()
        if not ok:
            raise Reply(401, {"error": "unauthorized"}, {"WWW-Authenticate": "Bearer"})

    # --- the API ---------------------------------------------------------------------------

    def _user(self, uid: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": uid,
            "userName": name,
            "externalId": body.get("externalId"),
            "displayName": body.get("displayName"),
            "email": body.get("email"),
            "title": body.get("title"),
            "active": body.get("active", True) is not False,
        }

    def _sorted(self) -> list[dict[str, Any]]:
        return sorted(self.users.values(), key=lambda u: int(u["id"]))

    def _route(self, method: str, parts: list[str], query: dict[str, str], body: Any):
        size = min(int(query.get("per_page") or query.get("limit") or 20), MAX_PAGE)
        match (method, parts):
            case ("GET", ["users"]):  # page / per_page, with a total
                users = self._sorted()
                if "userName" in query or "externalId" in query:  # either one matches
                    name, external = query.get("userName"), query.get("externalId")
                    users = [
                        u
                        for u in users
                        if u["userName"] == name or (external and u["externalId"] == external)
                    ]
                page = int(query.get("page", 1))
                return 200, {"users": users[(page - 1) * size : page * size], "total": len(users)}
            case ("GET", ["by-offset", "users"]):
                offset = int(query.get("offset", 0))
                return 200, {"data": self._sorted()[offset : offset + size]}
            case ("GET", ["by-cursor", "users"]):
                users = self._sorted()
                after = query.get("cursor")
                if after:
                    users = [u for u in users if int(u["id"]) > int(after)]
                chunk = users[:size]
                more = len(users) > size
                return 200, {"data": chunk, "meta": {"next": chunk[-1]["id"] if more else None}}
            case ("GET", ["by-link", "users"]):
                page = int(query.get("page", 1))
                users = self._sorted()
                headers = {}
                if page * size < len(users):
                    target = query.get("link_host", "")
                    link = f"{target}/by-link/users?page={page + 1}&per_page={size}"
                    headers["Link"] = f'<{link}>; rel="next", </by-link/users?page=1>; rel="first"'
                raise Reply(200, users[(page - 1) * size : page * size], headers)
            case ("POST", ["users"]):
                if not body.get("userName"):
                    return 400, {"error": "userName is required"}
                if body.get("password") and len(body["password"]) < 12:
                    return 400, {"error": f"password {body['password']} is too short"}
                if any(u["userName"] == body["userName"] for u in self.users.values()):
                    return 409, {"error": f"userName {body['userName']} is taken"}
                uid = str(next(self._ids))
                self.users[uid] = self._user(uid, body["userName"], body)
                return 201, self.users[uid]
            case ("GET", ["users", uid]):
                return (200, self.users[uid]) if uid in self.users else (404, {"error": "no"})
            case ("PATCH", ["users", uid]):
                if uid not in self.users:
                    return 404, {"error": "no such user"}
                fields = {"userName", "externalId", "displayName", "email", "title", "active"}
                self.users[uid].update({k: v for k, v in body.items() if k in fields})
                return 200, self.users[uid]
            case ("DELETE", ["users", uid]):
                if self.users.pop(uid, None) is None:
                    return 404, {"error": "no such user"}
                for members in self.groups.values():
                    members.discard(uid)
                return 204, None
            case ("GET", ["users", uid, "groups"]):
                if uid not in self.users:
                    return 404, {"error": "no such user"}
                return 200, [{"group": g} for g, m in sorted(self.groups.items()) if uid in m]
            case ("GET", ["memberships"]):
                return 200, [
                    {"user": uid, "group": g} for g, m in sorted(self.groups.items()) for uid in m
                ]
            case ("GET", ["groups", group]):
                if group not in self.groups:
                    return 404, {"error": "no such group"}
                return 200, {"name": group, "members": sorted(self.groups[group])}
            case ("PUT" | "DELETE", ["groups", group, "members", uid]):
                if group not in self.groups or uid not in self.users:
                    return 404, {"error": "no such group or user"}
                if method == "PUT":
                    self.groups[group].add(uid)
                elif uid in self.groups[group]:
                    self.groups[group].discard(uid)
                else:
                    return 404, {"error": "not a member"}
                return 204, None
            case ("GET", ["users", uid, "sessions"]):
                return 200, [{"n": n} for n in range(self.sessions.get(uid, 0))]
            case ("POST", ["users", uid, "sessions"]):
                self.sessions[uid] = self.sessions.get(uid, 0) + 1
                return 201, {}
            case ("DELETE", ["users", uid, "sessions"]):
                self.sessions.pop(uid, None)
                return 204, None
        return 404, {"error": f"no route {method} /{'/'.join(parts)}"}
