"""Clients for a served POLAR, against a real HTTP server on 127.0.0.1 (including failing and slow ones)."""

import socket
import time

import pytest

from uniapl.discriminators import DiscriminatorConfig, ServerConfig, build_discriminator
from uniapl.discriminators.polar import format_input
from uniapl.discriminators.polar_server import PolarHTTPClient, PolarServerError


def _disc(url, **server):
    server.setdefault("backoff_s", 0.01)
    server.setdefault("timeout_s", 2.0)
    return build_discriminator(DiscriminatorConfig(name="polar_server", server=ServerConfig(url=url, **server)))


@pytest.mark.parametrize("style", ["lmdeploy", "vllm", "sglang"])
def test_protocols(reward_server, style):
    srv = reward_server(style=style)
    disc = _disc(srv.url, backend=style, model="POLAR-7B")
    prompts, cands = ["Q1", "Q22"], ["ans", "answer two"]
    coef, raw, _ = disc.coefficients(prompts, cands, teachers=["ref", "ref"], ground_truths=[None, None])
    texts = [format_input(p, "ref", c) for p, c in zip(prompts, cands)]
    assert raw.tolist() == pytest.approx([-len(t) / 100 for t in texts])
    assert srv.paths == ["/classify" if style == "sglang" else "/pooling"]
    body = srv.requests[0]
    assert body["model"] == "POLAR-7B"
    assert body["text" if style == "sglang" else "input"] == texts


def test_bare_host_port_url(reward_server):
    srv = reward_server()
    client = PolarHTTPClient(srv.url.removeprefix("http://"), backoff_s=0.01)
    assert client.score_texts(["abcd"]) == [-0.04]


def test_transient_failures_are_retried(reward_server):
    srv = reward_server(fail_first=2, fail_status=503)
    client = PolarHTTPClient(srv.url, max_retries=3, backoff_s=0.01)
    assert client.score_texts(["ab"]) == [-0.02]
    assert len(srv.requests) == 3 and client.failures == 2


def test_server_that_stays_down_gives_a_clear_error(reward_server):
    srv = reward_server(status=500)
    client = PolarHTTPClient(srv.url, max_retries=2, backoff_s=0.01)
    with pytest.raises(PolarServerError, match=r"failed 3 attempts.*HTTP 500.*server running"):
        client.score_texts(["x"])
    assert len(srv.requests) == 3


def test_client_errors_are_not_retried(reward_server):
    srv = reward_server(status=400)
    with pytest.raises(PolarServerError, match="HTTP 400"):
        PolarHTTPClient(srv.url, max_retries=5, backoff_s=0.01).score_texts(["x"])
    assert len(srv.requests) == 1


def test_nothing_listening():
    with socket.socket() as s:  # a free port with no server behind it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = PolarHTTPClient(f"http://127.0.0.1:{port}", max_retries=2, backoff_s=0.01, max_backoff_s=0.02)
    t0 = time.monotonic()
    with pytest.raises(PolarServerError, match=rf"127.0.0.1:{port}/pooling.*failed 3 attempts"):
        client.score_texts(["x"])
    assert time.monotonic() - t0 < 5


def test_slow_server_times_out_then_recovers(reward_server):
    srv = reward_server(slow_first=1, delay_s=1.0)
    client = PolarHTTPClient(srv.url, timeout_s=0.2, max_retries=2, backoff_s=0.01)
    t0 = time.monotonic()
    assert client.score_texts(["abc"]) == [-0.03]
    assert client.failures == 1 and time.monotonic() - t0 < 1.0  # did not wait for the slow answer


def test_slow_server_every_time(reward_server):
    srv = reward_server(slow_first=10, delay_s=0.5)
    client = PolarHTTPClient(srv.url, timeout_s=0.1, max_retries=1, backoff_s=0.01)
    with pytest.raises(PolarServerError, match="timed out|Timeout"):
        client.score_texts(["abc"])


def test_backoff_doubles(reward_server, monkeypatch):
    waits = []
    monkeypatch.setattr("uniapl.discriminators.polar_server.time.sleep", waits.append)
    srv = reward_server(status=502)
    with pytest.raises(PolarServerError):
        PolarHTTPClient(srv.url, max_retries=4, backoff_s=0.1, max_backoff_s=0.5).score_texts(["x"])
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.5])


def test_server_scorer_truncates_with_local_tokenizer(reward_server, tiny_scorer_dirs):
    srv = reward_server()
    cfg = DiscriminatorConfig(name="polar_server", tokenizer_path=tiny_scorer_dirs["plain"],
                              server=ServerConfig(url=srv.url, backoff_s=0.01))
    cfg.polar.max_response_length = 4
    cfg.polar.max_length = 20
    disc = build_discriminator(cfg)
    disc.coefficients(["0123456789"], ["xyz"], teachers=["abcdef"], ground_truths=[None])
    assert srv.requests[0]["input"] == ["6789\nabc<|reward|>6789\nxyz[UNUSED_TOKEN_130]"]
    assert srv.requests[0]["model"] == "plain"  # defaults to the tokenizer folder's name


def test_ground_truth_mode_over_http(reward_server):
    srv = reward_server()
    disc = build_discriminator(DiscriminatorConfig(name="polar_server", reference="ground_truth",
                                                   server=ServerConfig(url=srv.url, backoff_s=0.01)))
    coef, raw, m = disc.coefficients(["Q"], ["student!"], teachers=["teacher"], ground_truths=["gt"])
    r_s = -len(format_input("Q", "gt", "student!")) / 100
    r_t = -len(format_input("Q", "gt", "teacher")) / 100
    assert raw.item() == pytest.approx(r_s - r_t)
    assert len(srv.requests) == 1  # student and teacher triples in one batch


def test_missing_url_is_a_clear_error():
    with pytest.raises(ValueError, match="server.url"):
        build_discriminator(DiscriminatorConfig(name="polar_server"))
