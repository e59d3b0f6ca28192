"""`serve` with several workers: any worker answers /metrics and
/_ctxwarden/stats for all of them, breakdowns per model and per upstream included."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.servers import cli_server, proxy_config_xml

REQUESTS = 40
SCRAPES = 6
MODELS = ("gpt-4o-mini", "llama-3")   # llama-* goes to the upstream "local"


def _chat(url: str, i: int) -> int:
    # A connection per request, several at once: the kernel hands them to both workers.
    return httpx.post(url + "/v1/chat/completions", timeout=15,
                      json={"model": MODELS[i % 2], "messages": [{"role": "user", "content": f"hello {i}"}]}).status_code


def _metric(text: str, name: str, **labels: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name + "{") or line.startswith(name + " ")
              if all(f'{k}="{v}"' in line for k, v in labels.items())]
    assert values, f"{name} {labels} not in metrics"
    return sum(values)


def _stats(url: str) -> dict:
    return httpx.get(url + "/_ctxwarden/stats", timeout=5).json()


def _eventually(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def _counts_all(text: str) -> bool:
    try:
        return (_metric(text, "ctxwarden_requests_total", route="chat_completions", status="200") == REQUESTS
                and _metric(text, "ctxwarden_request_seconds_count", route="chat_completions") == REQUESTS
                and _metric(text, "ctxwarden_requests_in_flight") == 0)
    except AssertionError:   # a metric not there yet
        return False


def _assert_every_scrape_counts_all(url: str) -> None:
    # The other worker's figures, metrics and stats, reach the files within a second.
    _eventually(lambda: _counts_all(httpx.get(url + "/metrics", timeout=5).text))
    for _ in range(SCRAPES):
        assert _counts_all(httpx.get(url + "/metrics", timeout=5).text)
    _eventually(lambda: _stats(url)["requests"] == REQUESTS)
    for _ in range(SCRAPES):
        stats = _stats(url)
        assert stats["requests"] == REQUESTS
        assert sum(second["requests"] for second in stats["series"]) == REQUESTS
        assert stats["tokens_before"] > 0 and stats["latency_ms"]["p50"] > 0
        by_model = {row["name"]: row for row in stats["by_model"]}
        assert {name: row["requests"] for name, row in by_model.items()} == dict.fromkeys(MODELS, REQUESTS // 2)
        assert sum(row["tokens_before"] for row in by_model.values()) == stats["tokens_before"]
        assert {row["name"]: row["requests"] for row in stats["by_upstream"]} == \
            {"openai": REQUESTS // 2, "local": REQUESTS // 2}


def test_two_workers_report_the_same_totals_on_every_scrape(tmp_path, upstream):
    path = tmp_path / "performance.xml"
    path.write_text(proxy_config_xml(upstream.url, local_url=upstream.url))
    # serve's private directory lands in tmp_path, where the test can watch it.
    with cli_server(path, extra_args=["--workers", "2"], env={"TMPDIR": str(tmp_path)}) as (url, proc):
        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(lambda i: _chat(url, i), range(REQUESTS))) == [200] * REQUESTS
        _assert_every_scrape_counts_all(url)
        assert httpx.get(url + "/_ctxwarden/config", timeout=5).json()["listening"]["workers"] == 2

        # SIGHUP replaces both workers: the counts stay, the old workers' gauges go.
        proc.send_signal(signal.SIGHUP)
        (shared,) = tmp_path.glob("ctxwarden-*")
        _eventually(lambda: len(list((shared / "stats").glob("*.json"))) == 4
                    and len(list((shared / "metrics").glob("gauge_livesum_*.db"))) == 2, timeout=30)
        _assert_every_scrape_counts_all(url)
    assert len(upstream.recorder) == REQUESTS
    assert not list(tmp_path.glob("ctxwarden-*")), "serve removes its directory"
