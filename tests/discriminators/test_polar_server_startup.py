"""A POLAR server that is down or silent is found at startup, within a bounded time, with one message."""

import socket
import threading
import time

import pytest

from tests.conftest import TINY
from uniapl.cli import main
from uniapl.discriminators.polar_server import PolarHTTPClient, PolarServerError


def _dead_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


class SilentServer:
    """Accepts connections on 127.0.0.1 and never answers (a hung server)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns = []
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)  # read nothing, answer nothing

    def close(self):
        self.stop = True
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def silent_server():
    s = SilentServer()
    yield s
    s.close()


def test_check_of_a_dead_port_fails_fast():
    client = PolarHTTPClient(_dead_url(), backoff_s=0.05, check_timeout_s=2.0)
    t = time.perf_counter()
    with pytest.raises(PolarServerError, match="did not answer within discriminator.server.check_timeout_s=2s"):
        client.check()
    assert time.perf_counter() - t < 3.0


def test_check_of_a_silent_server_is_bounded(silent_server):
    client = PolarHTTPClient(silent_server.url, timeout_s=60.0, max_retries=3, backoff_s=0.05, check_timeout_s=1.5)
    t = time.perf_counter()
    with pytest.raises(PolarServerError, match="timed out|TimeoutError"):
        client.check()
    assert 1.0 < time.perf_counter() - t < 4.0  # not 4 x 60 s


def test_all_retries_fit_in_max_total_s(silent_server):
    client = PolarHTTPClient(silent_server.url, timeout_s=60.0, max_retries=10, backoff_s=0.05, max_total_s=1.5)
    t = time.perf_counter()
    with pytest.raises(PolarServerError, match=r"1.5s in all"):
        client.score_texts(["x"])
    assert time.perf_counter() - t < 4.0


def test_check_passes_on_a_live_server(reward_server):
    srv = reward_server()
    PolarHTTPClient(srv.url, check_timeout_s=5.0).check()
    assert len(srv.requests) == 1


@pytest.mark.parametrize("which", ["dead", "silent"])
def test_training_stops_before_any_work(tmp_path, capsys, silent_server, which):
    url = _dead_url() if which == "dead" else silent_server.url
    out = tmp_path / "run"
    t = time.perf_counter()
    rc = main(["train", "configs/quickstart.yaml", *TINY, "stages=[]", "algorithm=unified", f"output_dir={out}",
               "discriminator.name=polar_server", f"discriminator.server.url={url}",
               "discriminator.server.backoff_s=0.05", "discriminator.server.check_timeout_s=1.5"])
    assert rc == 2
    assert time.perf_counter() - t < 30
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err
    assert url in lines[0] and "check_timeout_s" in lines[0]
    assert not out.exists()  # nothing written, no evaluation ran
