"""A counting JSON-RPC proxy: the daemon talks to the node through it, the test reads what it asked.

`CountingRpcProxy(node_url)` listens on 127.0.0.1 (a free port) in a thread, forwards every POST
to the node unchanged and counts the JSON-RPC methods (batches too). `channel_reads()` counts
what a look-up of one channel costs the node: `eth_call` (getChannel) and `eth_getLogs` filtered on
a channel id (the poller's log reads filter on event signatures only).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

__all__ = ["CountingRpcProxy"]


class CountingRpcProxy:
    def __init__(self, node_url: str) -> None:
        self.node_url = node_url
        self.methods: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=30)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                proxy._count(body)
                answer = proxy._http.post(proxy.node_url, content=body, headers={"content-type": "application/json"})
                self.send_response(answer.status_code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="rpc-counter", daemon=True)

    def __enter__(self) -> CountingRpcProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()

    def _count(self, body: bytes) -> None:
        try:
            parsed = json.loads(body)
        except ValueError:
            return
        calls = parsed if isinstance(parsed, list) else [parsed]
        with self._lock:
            for call in calls:
                method = call.get("method", "?")
                if method == "eth_getLogs":
                    topics = (call.get("params") or [{}])[0].get("topics") or []
                    if len(topics) > 1 and topics[1] is not None:
                        method = "eth_getLogs(channel)"
                self.methods[method] += 1

    def channel_reads(self) -> int:
        """Requests that read one channel (getChannel calls and its ChannelOpened log searches)."""
        with self._lock:
            return self.methods["eth_call"] + self.methods["eth_getLogs(channel)"]
