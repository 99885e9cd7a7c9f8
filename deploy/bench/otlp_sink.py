"""An OTLP/HTTP trace sink for ``make bench ARGS="--tracing"``: accepts what the services
export, counts the spans, keeps nothing. Prints ``OTLP_SINK_READY port=<port>``;
``GET /stats`` → ``{"requests", "spans"}``."""

from __future__ import annotations

import argparse
import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

REPLY = ExportTraceServiceResponse().SerializeToString()


class Counts:
    def __init__(self) -> None:
        self.requests = self.spans = 0
        self.lock = threading.Lock()

    def add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        with self.lock:
            self.requests += 1
            self.spans += spans


def serve(port: int) -> None:
    counts = Counts()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            counts.add(body)
            self._reply(200, "application/x-protobuf", REPLY)

        def do_GET(self) -> None:
            stats = {"requests": counts.requests, "spans": counts.spans}
            self._reply(200, "application/json", json.dumps(stats).encode())

        def _reply(self, status: int, kind: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"OTLP_SINK_READY port={server.server_address[1]}", flush=True)
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.bench.otlp_sink")
    parser.add_argument("--port", type=int, default=0)
    serve(parser.parse_args().port)


if __name__ == "__main__":
    main()
