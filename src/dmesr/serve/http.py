"""A small JSON-over-HTTP front for a `Recommender` (standard library only).

    GET  /health     -> {"status": "ok", "model": {...}}  (run, checkpoint, dataset hash)
    POST /recommend  {"user": KEY} | {"users": [KEY, ...]} | {"history": [ITEM_KEY, ...]}
                     optional "k" (10), "exclude_seen" (true), "skip_unknown" (false)
                  -> {"results": [{"user": KEY | null, "items": [{"rank", "item_key",
                      "score", <label field>}, ...]}, ...]}

Bad requests get 400 with {"error": "..."}: unknown users or items, wrong types. Requests
are served by threads; the model is called under a lock, one batch at a time.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dmesr.errors import DmesrError
from dmesr.serve.recommender import Recommender

MAX_BODY = 10 * 2**20
log = logging.getLogger("dmesr.serve")


class BadRequest(DmesrError):
    pass


def _field(body: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = body.get(name, default)
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise BadRequest(f"'{name}' must be {kind.__name__}, got {json.dumps(value)}")
    return value


def _keys(body: dict[str, Any], name: str) -> list[str]:
    value = body[name]
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise BadRequest(f"'{name}' must be a list of keys (strings), got {json.dumps(value)}")
    return [str(v) for v in value]


def answer(rec: Recommender, body: object, lock: threading.Lock) -> dict[str, Any]:
    """The /recommend response for a parsed JSON body."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    asked = [n for n in ("user", "users", "history") if n in body]
    if len(asked) != 1:
        raise BadRequest("give exactly one of 'user', 'users' or 'history'")
    unknown_fields = set(body) - {"user", "users", "history", "k", "exclude_seen",
                                  "skip_unknown"}
    if unknown_fields:
        raise BadRequest(f"unknown field(s) {sorted(unknown_fields)}")
    k = _field(body, "k", int, 10)
    exclude = _field(body, "exclude_seen", bool, True)
    skip = _field(body, "skip_unknown", bool, False)
    with lock:
        if asked[0] == "history":
            ids = rec.item_ids(_keys(body, "history"), "skip" if skip else "error")
            top, owners = rec.for_histories([ids], k, exclude), [None]
        else:
            owners = [str(body["user"])] if asked[0] == "user" else _keys(body, "users")
            top = rec.for_users(owners, k, exclude)
    return {"results": [{"user": owner, "items": rec.ranked_items(top, row)}
                        for row, owner in enumerate(owners)]}


def make_server(rec: Recommender, host: str, port: int) -> ThreadingHTTPServer:
    lock = threading.Lock()
    model_info = rec.describe()

    class Handler(BaseHTTPRequestHandler):
        server_version = "dmesr"

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/health":
                self._send(HTTPStatus.OK, {"status": "ok", "model": model_info})
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no route GET {self.path}"})

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/recommend":
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no route POST {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    raise BadRequest(f"body of {length} bytes is over {MAX_BODY}")
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except ValueError as exc:
                    raise BadRequest(f"the body is not JSON: {exc}") from exc
                self._send(HTTPStatus.OK, answer(rec, body, lock))
            except (DmesrError, ValueError) as exc:
                self._send(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            except Exception as exc:  # keep serving; the client gets the reason
                log.exception("request failed")
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR,
                           {"error": f"{type(exc).__name__}: {exc}"})

        def log_message(self, format: str, *args: Any) -> None:
            log.info("%s %s", self.address_string(), format % args)

    return ThreadingHTTPServer((host, port), Handler)
