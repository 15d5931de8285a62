"""The controller's HTTP endpoint on loopback: `GET /v1/plan` (the running plan, planned rates and
recent decisions), `POST /v1/services` (a new services file, YAML or JSON: checked, then re-planned
for at the next tick; a bad one is 400 with one line and changes nothing) and `GET /metrics`
(Prometheus text, when metrics are kept). `route` decides every answer and is tested without a
socket; `serve_api` puts it behind the standard library's threaded HTTP server."""

from __future__ import annotations

import json
import threading
from typing import Callable

from parvagpu.control.live import MAX_SERVICES_BODY, Controller, services_from_body
from parvagpu.core.errors import ParvaError


def route(ctl: Controller, method: str, path: str, body: bytes, profiles, models: set[str] | None,
          metrics: Callable[[], bytes] | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body) for one request."""
    path = path.split("?", 1)[0].rstrip("/")
    if method == "GET" and path == "/v1/plan":
        return _json(200, ctl.snapshot())
    if method == "POST" and path == "/v1/services":
        try:
            services = services_from_body(body, profiles, models)
        except ParvaError as exc:
            return _json(400, {"error": str(exc).splitlines()[0]})
        ctl.submit_services(services)
        return _json(202, {"accepted": [s.model for s in services], "note": "re-planned at the next tick"})
    if method == "GET" and path == "/metrics" and metrics is not None:
        return 200, "text/plain; version=0.0.4; charset=utf-8", metrics()
    return _json(404, {"error": f"no route {method} {path}"[:200]})


def _json(status: int, doc) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(doc, allow_nan=False, default=str).encode()


def serve_api(ctl: Controller, port: int, profiles, models: set[str] | None,
              metrics: Callable[[], bytes] | None = None, host: str = "127.0.0.1"):
    """Start the endpoint in a thread; returns the server (`shutdown()` to stop)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, method: str) -> None:
            n = int(self.headers.get("content-length") or 0)
            if n > MAX_SERVICES_BODY:
                status, ctype, out = _json(413, {"error": f"body exceeds {MAX_SERVICES_BODY} bytes"})
            else:
                status, ctype, out = route(ctl, method, self.path, self.rfile.read(n) if n else b"", profiles,
                                           models, metrics)
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def do_GET(self) -> None:  # noqa: N802 (the standard library's names)
            self._answer("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._answer("POST")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
