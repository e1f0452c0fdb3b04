"""Shared fixtures: tiny random scoring models saved to a temporary folder; a loopback HTTP server."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from uniapl.discriminators.testing import save_byte_tokenizer, save_tiny_scorer


@pytest.fixture(scope="session")
def tiny_scorer_dirs(tmp_path_factory):
    """{"plain": LlamaForSequenceClassification dir, "remote": POLAR-like remote-code dir}."""
    root = tmp_path_factory.mktemp("tiny_scorers")
    return {
        "plain": str(save_tiny_scorer(root / "plain", remote_code=False)),
        "remote": str(save_tiny_scorer(root / "remote", remote_code=True)),
    }


@pytest.fixture(scope="session")
def byte_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("byte_tok")
    save_byte_tokenizer(path)
    return AutoTokenizer.from_pretrained(str(path))


class FakeRewardServer:
    """A reward-model server on 127.0.0.1 speaking lmdeploy/vLLM ``/pooling`` and sglang ``/classify``.

    score(text) = -len(text) / 100. ``fail_first`` requests answer ``fail_status``; ``slow_first``
    requests sleep ``delay_s`` before answering; ``status`` != 200 makes every request fail.
    """

    def __init__(self, style: str = "lmdeploy", fail_first: int = 0, fail_status: int = 503, slow_first: int = 0,
                 delay_s: float = 0.0, status: int = 200):
        self.style, self.fail_first, self.fail_status = style, fail_first, fail_status
        self.slow_first, self.delay_s, self.status = slow_first, delay_s, status
        self.requests: list[dict] = []
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                n = len(server.requests)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.paths.append(self.path)
                if n < server.slow_first:
                    time.sleep(server.delay_s)
                if server.status != 200 or n < server.fail_first:
                    code = server.status if server.status != 200 else server.fail_status
                    self.send_response(code)
                    self.end_headers()
                    self.wfile.write(b'{"error": "failing on purpose"}')
                    return
                texts = body.get("input") if server.style != "sglang" else body.get("text")
                scores = [-len(t) / 100 for t in texts]
                if server.style == "lmdeploy":
                    out = {"data": [{"data": s} for s in scores]}
                elif server.style == "vllm":  # per-token rewards, shuffled order with indices
                    items = [{"index": i, "object": "pooling", "data": [[0.0], [s]]} for i, s in enumerate(scores)]
                    out = {"object": "list", "data": list(reversed(items))}
                else:
                    out = [{"embedding": [s], "index": i} for i, s in enumerate(scores)]
                payload = json.dumps(out).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def reward_server():
    servers = []

    def make(**kwargs):
        s = FakeRewardServer(**kwargs)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()
