"""A fake payment provider, as the trip example's outside system: an HTTP API that takes
an ``Idempotency-Key`` on every request and answers a key it has seen with its first
answer, never charging twice. ``python -m examples.trip.provider --port 8765``.

``POST /charges`` ``{"reference", "amount_cents"}`` → ``{"charge_id"}``, or 402 above
``LIMIT_CENTS`` (a declined card); ``POST /refunds`` ``{"charge_id"}`` → ``{"refund_id"}``;
``GET /charges`` → every charge, with the key it was made under and its refund, for a
check from outside (``examples.trip.checks``).
"""

from __future__ import annotations

import argparse
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LIMIT_CENTS = 500_000
MAX_BODY = 4096


class Ledger:
    """What the provider answered, by idempotency key; its charges and refunds."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answers: dict[str, tuple[int, dict[str, Any]]] = {}
        self.charges: dict[str, dict[str, Any]] = {}

    def answer(self, path: str, key: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            if key not in self.answers:
                self.answers[key] = self._first(path, body, key)
            return self.answers[key]

    def _first(self, path: str, body: dict[str, Any], key: str) -> tuple[int, dict[str, Any]]:
        if path == "/charges":
            amount = body.get("amount_cents")
            if not isinstance(amount, int) or amount < 1:
                return 400, {"error": "amount_cents must be a positive integer"}
            if amount > LIMIT_CENTS:
                return 402, {"error": "card declined"}
            charge_id = "ch_" + uuid.uuid4().hex[:16]
            self.charges[charge_id] = {
                "charge_id": charge_id,
                "reference": str(body.get("reference")),
                "amount_cents": amount,
                "key": key,
                "refund_id": None,
            }
            return 200, {"charge_id": charge_id}
        charge = self.charges.get(str(body.get("charge_id")))
        if charge is None:
            return 404, {"error": "no such charge"}
        charge["refund_id"] = charge["refund_id"] or "re_" + uuid.uuid4().hex[:16]
        return 200, {"refund_id": charge["refund_id"]}


def handler(ledger: Ledger) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/charges":
                return self._send(404, {"error": "not found"})
            with ledger.lock:
                self._send(200, {"charges": list(ledger.charges.values())})

        def do_POST(self) -> None:
            key = self.headers.get("idempotency-key", "")
            raw_length = self.headers.get("content-length") or "0"
            length = int(raw_length) if raw_length.isdigit() else MAX_BODY + 1
            if self.path not in ("/charges", "/refunds") or not key or length > MAX_BODY:
                return self._send(400, {"error": "POST /charges or /refunds, with a key"})
            try:
                body = json.loads(self.rfile.read(length))
            except ValueError:
                return self._send(400, {"error": "the body is not JSON"})
            if not isinstance(body, dict):
                return self._send(400, {"error": "the body is not an object"})
            self._send(*ledger.answer(self.path, key, body))

        def _send(self, status: int, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: a request a step makes is in the step's own log

    return Handler


def serve(port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """The provider on ``host:port`` (0: any free port), not yet serving."""
    return ThreadingHTTPServer((host, port), handler(Ledger()))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m examples.trip.provider", description=__doc__)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args()
    server = serve(args.port, args.host)
    print(f"payment provider on http://{args.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
