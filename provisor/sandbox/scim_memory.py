"""A minimal SCIM 2.0 service held in memory, fast enough never to be what a benchmark measures.

Does: answer, in a child process of its own (its CPU time is not the caller's), what Provisor's
SCIM connector asks of a server: ``/ServiceProviderConfig``, ``/ResourceTypes``, users and
groups listed (``eq`` filters joined by ``or``/``and`` on id, userName, externalId,
displayName, members.value; ``meta.lastModified ge``; ``startIndex``/``count``), read,
created (409 on a taken userName), replaced, patched (members added, removed by value or by a
``members[value eq ...]`` path; attributes replaced) and deleted; a user shows its groups.
Optionally each request waits ``latency`` seconds first, and a token bucket of ``rate``
requests per second (``burst`` deep) answers 429 with ``Retry-After`` beyond it. ``GET
/_stats`` says how many requests it served, how many 429s, and how many per second.
Does not: validate schemas, authenticate, keep anything, or implement what the connector
does not use (bulk, sorting, etags): it is a benchmark's target, not a SCIM implementation to
test against (the tests use ``scim2-server`` and others for that).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2

from provisor.errors import ProvisorError
from provisor.sandbox import free_port

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
LIST = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
_TEST = re.compile(r'^\s*([\w.]+)\s+(eq|ge)\s+"((?:[^"\\]|\\.)*)"\s*$', re.IGNORECASE)
_MEMBER_PATH = re.compile(r'^members\[value eq "([^"]+)"\]$', re.IGNORECASE)


class _Problem(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def _now() -> str:
    return datetime.now(UTC).isoformat()


class Store:
    """Users and groups by id, with the userName index and each user's groups."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kinds: dict[str, dict[str, dict[str, Any]]] = {"Users": {}, "Groups": {}}
        self.names: dict[str, str] = {}  # lower-case userName -> id
        self.externals: dict[str, str] = {}  # externalId -> id (the latest user given it)

    def index(self, kind: str, resource: dict[str, Any]) -> None:
        """A user's userName and externalId point to it (older entries are only candidates:
        every filter's answer is still tested)."""
        if kind != "Users":
            return
        if resource.get("userName"):
            self.names[str(resource["userName"]).lower()] = resource["id"]
        if resource.get("externalId"):
            self.externals[str(resource["externalId"])] = resource["id"]

    def _user_view(self, user: dict[str, Any]) -> dict[str, Any]:
        groups = [
            {"value": gid, "display": g.get("displayName")}
            for gid, g in self.kinds["Groups"].items()
            if any(m.get("value") == user["id"] for m in g.get("members", []))
        ]
        return user | {"groups": groups}

    def view(self, kind: str, resource: dict[str, Any]) -> dict[str, Any]:
        return self._user_view(resource) if kind == "Users" else dict(resource)

    def candidates(self, kind: str, filter_: str) -> list[dict[str, Any]] | None:
        """The users a filter of ``eq`` tests on id, userName or externalId can match, from
        the indexes (each still tested by ``matches``); None when it names anything else."""
        if kind != "Users":
            return None
        found: dict[str, dict[str, Any]] = {}
        users = self.kinds["Users"]
        for alternative in re.split(r"\s+or\s+", filter_, flags=re.IGNORECASE):
            test = _TEST.match(alternative)
            if test is None or test.group(2).lower() != "eq":
                return None
            attr, value = test.group(1).lower(), str(json.loads(f'"{test.group(3)}"'))
            index = {"id": None, "username": self.names, "externalid": self.externals}
            if attr not in index:
                return None
            table = index[attr]
            rid = (
                value
                if table is None
                else table.get(value.lower() if attr == "username" else value)
            )
            if rid is not None and rid in users:
                found[rid] = users[rid]
        return list(found.values())

    def matches(self, kind: str, resource: dict[str, Any], filter_: str | None) -> bool:
        if not filter_:
            return True
        for alternative in re.split(r"\s+or\s+", filter_, flags=re.IGNORECASE):
            tests = re.split(r"\s+and\s+", alternative, flags=re.IGNORECASE)
            if all(self._test(kind, resource, test) for test in tests):
                return True
        return False

    def _test(self, kind: str, resource: dict[str, Any], test: str) -> bool:
        found = _TEST.match(test)
        if found is None:
            raise _Problem(400, f"filter not understood here: {test}")
        attr, op, value = found.group(1).lower(), found.group(2).lower(), found.group(3)
        value = str(json.loads(f'"{value}"'))
        if attr == "members.value":
            return any(m.get("value") == value for m in resource.get("members", []))
        if attr == "meta.lastmodified":
            return str(resource["meta"]["lastModified"]) >= value if op == "ge" else False
        key = {"id": "id", "username": "userName", "externalid": "externalId"}.get(attr, attr)
        key = "displayName" if attr == "displayname" else key
        held = resource.get(key)
        if held is None:
            return False
        if key in ("userName", "displayName"):
            return str(held).lower() == value.lower()
        return str(held) == value


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # a small answer must not wait for the last one's ACK
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/scim+json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length)) if length else None

    def _handle(self) -> None:
        server = self.server
        body = self._body()
        parts = urlsplit(self.path)
        if parts.path == "/_stats":
            self._send(200, server.stats())
            return
        if not server.admit():
            self._send(429, {"schemas": [ERROR], "status": "429"}, {"Retry-After": "1"})
            return
        if server.latency:
            time.sleep(server.latency)
        try:
            status, answer = server.route(self.command, parts.path, parse_qs(parts.query), body)
        except _Problem as problem:
            status, answer = (
                problem.status,
                {
                    "schemas": [ERROR],
                    "status": str(problem.status),
                    "detail": str(problem),
                },
            )
        self._send(status, answer)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, port: int, latency: float, rate: float | None, burst: float) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.latency, self.rate, self.burst = latency, rate, burst
        self.store = Store()
        self._meter = threading.Lock()
        self._tokens, self._stamp = burst, time.monotonic()
        self.served = 0
        self.too_many = 0
        self.seconds: dict[int, int] = {}

    def admit(self) -> bool:
        """Count the request; False when the rate limit says 429."""
        with self._meter:
            now = time.monotonic()
            if self.rate is not None:
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens < 1:
                    self.too_many += 1
                    return False
                self._tokens -= 1
            self.served += 1
            second = int(time.time())
            self.seconds[second] = self.seconds.get(second, 0) + 1
            return True

    def stats(self) -> dict[str, Any]:
        with self._meter:
            return {
                "requests": self.served,
                "too_many": self.too_many,
                "per_second": {str(k): v for k, v in sorted(self.seconds.items())},
            }

    def route(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        parts = [p for p in path.split("/") if p]
        if parts and parts[0] == "v2":
            parts = parts[1:]
        if parts == ["ServiceProviderConfig"]:
            return 200, {
                "patch": {"supported": True},
                "filter": {"supported": True, "maxResults": 1000},
                "bulk": {"supported": False},
                "sort": {"supported": False},
                "etag": {"supported": False},
                "changePassword": {"supported": False},
            }
        if parts == ["ResourceTypes"]:
            kinds = [("User", "/Users", USER), ("Group", "/Groups", GROUP)]
            found = [{"id": n, "name": n, "endpoint": e, "schema": s} for n, e, s in kinds]
            return 200, {"schemas": [LIST], "totalResults": 2, "Resources": found}
        if parts == ["Schemas"]:
            return 200, {"schemas": [LIST], "totalResults": 0, "Resources": []}
        if not parts or parts[0] not in ("Users", "Groups") or len(parts) > 2:
            raise _Problem(404, f"no such endpoint: {path}")
        kind = parts[0]
        with self.store.lock:
            if len(parts) == 1:
                if method == "GET":
                    return 200, self._list(kind, query)
                if method == "POST":
                    return 201, self._create(kind, body)
                raise _Problem(405, f"{method} {path}")
            return self._one(kind, parts[1], method, body)

    def _list(self, kind: str, query: dict[str, list[str]]) -> dict[str, Any]:
        store = self.store
        filter_ = (query.get("filter") or [""])[0]
        start = int((query.get("startIndex") or ["1"])[0])
        count = int((query.get("count") or ["1000"])[0])
        pool = store.candidates(kind, filter_) if filter_ else None
        every = store.kinds[kind].values() if pool is None else pool
        found = [r for r in every if store.matches(kind, r, filter_)]
        page = found[max(0, start - 1) : max(0, start - 1) + count]
        return {
            "schemas": [LIST],
            "totalResults": len(found),
            "startIndex": start,
            "itemsPerPage": len(page),
            "Resources": [store.view(kind, r) for r in page],
        }

    def _create(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        store = self.store
        if kind == "Users":
            name = str(body.get("userName") or "").lower()
            if not name:
                raise _Problem(400, "userName is required")
            holder = store.kinds["Users"].get(store.names.get(name, ""))
            if holder is not None and str(holder.get("userName", "")).lower() == name:
                raise _Problem(409, f"userName {name} is taken")
        resource = dict(body)
        resource["id"] = uuid.uuid4().hex
        resource["meta"] = {"resourceType": kind[:-1], "created": _now(), "lastModified": _now()}
        resource.setdefault("schemas", [USER if kind == "Users" else GROUP])
        if kind == "Users":
            resource.setdefault("active", True)
        store.kinds[kind][resource["id"]] = resource
        store.index(kind, resource)
        return store.view(kind, resource)

    def _one(self, kind: str, rid: str, method: str, body: Any) -> tuple[int, Any]:
        store = self.store
        resource = store.kinds[kind].get(rid)
        if resource is None:
            raise _Problem(404, f"{kind}/{rid} not found")
        if method == "GET":
            return 200, store.view(kind, resource)
        if method == "DELETE":
            del store.kinds[kind][rid]
            if kind == "Users":
                store.names.pop(str(resource.get("userName", "")).lower(), None)
                for group in store.kinds["Groups"].values():
                    group["members"] = [m for m in group.get("members", []) if m["value"] != rid]
            return 204, None
        if method == "PUT":
            kept = {"id": rid, "meta": resource["meta"]}
            if kind == "Users":
                store.names.pop(str(resource.get("userName", "")).lower(), None)
            resource.clear()
            resource.update({k: v for k, v in body.items() if k != "groups"} | kept)
        elif method == "PATCH":
            for operation in body.get("Operations", []):
                self._patch(resource, operation)
        else:
            raise _Problem(405, method)
        store.index(kind, resource)
        resource["meta"]["lastModified"] = _now()
        return 200, store.view(kind, resource)

    @staticmethod
    def _patch(resource: dict[str, Any], operation: dict[str, Any]) -> None:
        op = str(operation.get("op", "")).lower()
        path = operation.get("path")
        value = operation.get("value")
        members: list[dict[str, Any]] = resource.setdefault("members", [])
        if path is not None and path.lower() == "members":
            wanted = {m["value"] for m in value or []}
            if op == "add":
                held = {m["value"] for m in members}
                members.extend({"value": v} for v in sorted(wanted - held))
            elif op == "remove":
                resource["members"] = [m for m in members if m["value"] not in wanted]
            elif op == "replace":
                resource["members"] = [{"value": v} for v in sorted(wanted)]
            return
        member = _MEMBER_PATH.match(path or "")
        if member is not None and op == "remove":
            resource["members"] = [m for m in members if m["value"] != member.group(1)]
            return
        if path is None and isinstance(value, dict):
            resource.update(value)
            return
        if path is not None and op in ("add", "replace"):
            resource[path] = value
            return
        if path is not None and op == "remove":
            resource.pop(path, None)
            return
        raise _Problem(400, f"patch operation not understood here: {operation}")


class MemoryScim:
    """The service in a child process; ``url`` is its base URL (``.../v2``)."""

    def __init__(
        self, *, latency: float = 0.0, rate: float | None = None, burst: float | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v2"
        command = [sys.executable, "-m", __name__, "--port", str(self.port)]
        command += ["--latency", str(latency)]
        if rate is not None:
            command += ["--rate", str(rate), "--burst", str(burst or max(1.0, rate / 10))]
        self._process = subprocess.Popen(command)
        deadline = time.monotonic() + 20
        while True:
            if self._process.poll() is not None:
                raise ProvisorError(
                    f"the in-memory SCIM service exited ({self._process.returncode})"
                )
            try:
                httpx2.get(f"http://127.0.0.1:{self.port}/_stats", timeout=1)
                return
            except httpx2.TransportError:
                if time.monotonic() > deadline:
                    raise ProvisorError("the in-memory SCIM service did not start") from None
                time.sleep(0.05)

    def stats(self) -> dict[str, Any]:
        answer: dict[str, Any] = httpx2.get(f"http://127.0.0.1:{self.port}/_stats").json()
        return answer

    def group(self, name: str) -> str:
        """Create a group; its id."""
        body = {"schemas": [GROUP], "displayName": name, "members": []}
        created = httpx2.post(f"{self.url}/Groups", json=body, timeout=10)
        created.raise_for_status()
        return str(created.json()["id"])

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)

    def __enter__(self) -> MemoryScim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="A minimal in-memory SCIM 2.0 service.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--burst", type=float, default=1.0)
    args = parser.parse_args()
    Server(args.port, args.latency, args.rate, args.burst).serve_forever()


if __name__ == "__main__":
    main()
