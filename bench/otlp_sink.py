"""A local OTLP/HTTP sink for measuring tracing cost: accepts POST /v1/traces, counts spans, answers 200.

    python bench/otlp_sink.py 4318 &   # then OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 bench/run.sh
On SIGTERM it prints how many export requests and spans it received."""

from __future__ import annotations

import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

received = {"requests": 0, "spans": 0}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        request = ExportTraceServiceRequest()
        request.ParseFromString(raw)
        received["requests"] += 1
        received["spans"] += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 4318), Handler)

    def stop(*_: Any) -> None:
        print(f"otlp sink: {received['requests']} export request(s), {received['spans']} span(s)", flush=True)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
