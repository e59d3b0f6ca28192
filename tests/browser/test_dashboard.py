"""The live dashboard in a real headless Chromium (Debian `chromium`), driven
with Playwright's Python package (no `playwright install`: the system browser
is launched by path).

The page is loaded against a running proxy (behind an admin token, passed as
?token=), traffic is sent (plain and rewritten chat requests in both dialects,
an upstream 500), and the figures on the page must change to what the
responses' headers say. Screenshots go to the test's tmp dir and to
bench/results/dashboard.png (+ dashboard-dark.png) for people to look at."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from ctxwarden.observability.record import RequestRecord
from ctxwarden.observability.stats import MODELS_TRACKED, LiveStats
from tests.conftest import serve_proxy
from tests.servers import REPO_ROOT, free_port

CHROMIUM = Path(os.environ.get("CTXWARDEN_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ADMIN_ENV = "CTXW_DASHBOARD_TEST_ADMIN"
ADMIN_TOKEN = "dash-admin-secret"
TIMEOUT_MS = 10_000  # the page polls every 2 s

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason=f"{CHROMIUM} is absent (Debian package `chromium`; "
                                       "scripts/system_deps.sh installs it)")


def _config(upstream_url: str, dead_url: str | None = None) -> str:
    # budget 4000: a ~40k-token conversation gets rewritten, a short one does not.
    # dead-* models go to `dead_url`, where nobody listens.
    # one retry when nobody answers there
    dead = (f'<upstream name="dead" dialect="openai" base_url="{dead_url}"><model>dead-*</model>'
            f'<retry attempts="1" backoff="0.01" on="connect"/></upstream>' if dead_url else "")
    return f"""<performance_optimization>
  <token_management><budget>4000</budget></token_management>
  <admin token_env="{ADMIN_ENV}"/>
  <upstreams>
    {dead}
    <upstream name="openai" dialect="openai" base_url="{upstream_url}"/>
    <upstream name="anthropic" dialect="anthropic" base_url="{upstream_url}"/>
  </upstreams>
</performance_optimization>"""


def _long_conversation(tag: str) -> list[dict]:
    long_text = "\n".join(f"{tag} line {i}: value = compute(src/{tag}_{i}.py)" for i in range(3000))
    return [{"role": "user", "content": long_text}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": f"and now, {tag}?"}]


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # a missing test dependency is an error, not a skip
        pytest.fail("the `playwright` Python package is missing: it is in the `test` extra "
                    "(pip install -e '.[test]'); the browser itself is the system's Chromium")

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _value(page, selector: str) -> str:
    return page.get_attribute(selector, "data-value")


def _wait_value(page, selector: str, expected: str) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            "([sel, want]) => { const e = document.querySelector(sel); return e && e.dataset.value === want; }",
            arg=[selector, expected], timeout=TIMEOUT_MS)
    except PlaywrightTimeout:
        raise AssertionError(f"{selector} shows data-value={_value(page, selector)!r}, not {expected!r}; "
                             f"status {page.text_content('#status')!r}, message {page.text_content('#message')!r}")


def _save(page, name: str, tmp_path: Path) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    try:
        results = REPO_ROOT / "bench" / "results"
        results.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, results / name)
    except OSError:  # a read-only checkout still keeps the tmp copy
        pass
    return shot


def test_dashboard_shows_live_figures(browser, fake_upstream_server, upstream, tmp_path, monkeypatch):
    monkeypatch.setenv(ADMIN_ENV, ADMIN_TOKEN)
    with serve_proxy(_config(fake_upstream_server.url, dead_url=f"http://127.0.0.1:{free_port()}")) as url:
        # Without the token the page itself is refused.
        assert httpx.get(url + "/_ctxwarden/dashboard").status_code == 401

        context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="light")
        page = context.new_page()
        outside, page_errors = [], []
        page.on("request", lambda r: None if r.url.startswith((url, "data:")) else outside.append(r.url))
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        try:
            response = page.goto(f"{url}/_ctxwarden/dashboard?token={ADMIN_TOKEN}")
            assert response is not None and response.status == 200
            # First poll went through with the token carried as a header.
            _wait_value(page, "#requests", "0")
            assert page.get_attribute("#status", "data-state") == "live"
            assert page.locator("#rewrites tbody tr").count() == 0
            page.click("#window-60")

            client = httpx.Client(base_url=url, timeout=15)
            sent: list[httpx.Response] = []
            chat = lambda body, **h: sent.append(client.post("/v1/chat/completions", json=body, headers=h))  # noqa: E731
            chat({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]})
            # temperature 0: cacheable, a miss then a hit
            chat({"model": "gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": "again"}]})
            chat({"model": "gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": "again"}]})
            chat({"model": "gpt-4o-mini", "messages": _long_conversation("alpha")})
            sent.append(client.post("/v1/messages", json={"model": "claude-sonnet-4-5", "max_tokens": 64,
                                                          "messages": _long_conversation("beta")},
                                    headers={"anthropic-version": "2023-06-01"}))
            # answered 500 by the upstream: relayed, not an upstream error
            chat({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "this one fails"}]},
                 **{"x-fake-status": "500"})
            # routed to an upstream nobody listens on: an upstream error (connect)
            chat({"model": "dead-1", "messages": [{"role": "user", "content": "anyone there?"}]})
            client.close()

            assert [r.status_code for r in sent] == [200, 200, 200, 200, 200, 500, 502]
            assert [r.headers.get("x-ctxwarden-cache") for r in sent[:3]] == ["bypass", "miss", "hit"]
            rewrites = [r.headers.get("x-ctxwarden-rewrite") for r in sent]
            assert rewrites[3] in ("compact", "append") and rewrites[4] in ("compact", "append"), rewrites
            assert all(r == "unchanged" for i, r in enumerate(rewrites[:6]) if i not in (3, 4)), rewrites
            before = [int(r.headers["x-ctxwarden-tokens-before"]) for r in sent[:6]]
            after = [int(r.headers["x-ctxwarden-tokens-after"]) for r in sent[:6]]
            saved = sum(before) - sum(after)
            assert saved > 0

            _wait_value(page, "#requests", str(len(sent)))
            _wait_value(page, "#tokens-saved", str(saved))
            _wait_value(page, "#upstream-errors", "1")
            page.wait_for_function("document.querySelectorAll('#rewrites tbody tr').length === 2",
                                   timeout=TIMEOUT_MS)
            page.wait_for_function("Number(document.querySelector('#rps').dataset.value) > 0", timeout=TIMEOUT_MS)

            assert page.text_content("#requests") == str(len(sent))
            assert page.text_content("#tokens-saved") == f"{saved:,}"
            # the 502 carries no token headers; it was counted (and sent unchanged) all the same
            dead = int(page.get_attribute('#by-model tbody tr[data-name="dead-1"]', "data-tokens-before"))
            assert page.get_attribute('#by-model tbody tr[data-name="dead-1"]', "data-tokens-after") == str(dead)
            ratio = float(_value(page, "#reduction-ratio"))
            assert ratio == pytest.approx(1 - (sum(after) + dead) / (sum(before) + dead), abs=1e-4)
            assert page.text_content("#reduction-ratio") == f"{ratio * 100:.1f}%"
            assert float(_value(page, "#p50")) > 0 and float(_value(page, "#p99")) >= float(_value(page, "#p50"))
            assert page.text_content("#p99").endswith(("ms", " s"))

            # The upstream errors card is the metric of that name, over the same requests.
            admin = {"x-ctxwarden-admin-token": ADMIN_TOKEN}
            metrics = httpx.get(url + "/metrics", headers=admin).text
            errors_metric = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                                if line.startswith("ctxwarden_upstream_errors_total{"))
            assert page.text_content("#upstream-errors") == "1" and errors_metric == 1
            assert 'ctxwarden_upstream_errors_total{kind="connect",upstream="dead"} 1.0' in metrics
            assert page.text_content("#errors-detail") == "connect 1"
            assert "alert" in (page.get_attribute("#errors-card", "class") or "")
            # Retries: the dead upstream's one, as its metric counts it.
            assert 'ctxwarden_upstream_retries_total{reason="connect",upstream="dead"} 1.0' in metrics
            assert page.text_content("#retries") == "1" and _value(page, "#retries") == "1"
            assert page.text_content("#retries-detail") == "no fallback"

            # The cache: hits over cacheable requests (the two temperature-0 ones); beside it the share
            # of chat requests that bypassed it (the five that sample: no temperature).
            stats = httpx.get(url + "/_ctxwarden/stats", headers=admin).json()
            assert (stats["cache_hits"], stats["cache_misses"], stats["cache_bypassed"]) == (1, 1, 5)
            assert float(_value(page, "#cache-hit-rate")) == stats["cache_hit_rate"] == 0.5
            assert page.text_content("#cache-hit-rate") == "50.0%"
            assert page.text_content("#cache-detail") == "1 hit of 2 cacheable"
            assert float(_value(page, "#cache-bypass")) == stats["cache_bypass_ratio"] == pytest.approx(5 / 7, abs=1e-4)
            assert page.text_content("#cache-bypass") == "71.4%"

            # The bill with the prompt cache priced in, as the responses' headers priced it.
            costs = [(float(r.headers["x-ctxwarden-cost-sent"]), float(r.headers["x-ctxwarden-cost-passthrough"]))
                     for r in sent if "x-ctxwarden-cost-sent" in r.headers]
            bill_saved = 1 - sum(c for c, _ in costs) / sum(p for _, p in costs)
            assert 0 < stats["bill_saved_ratio"] < 1
            assert float(_value(page, "#bill-saved")) == stats["bill_saved_ratio"] == pytest.approx(bill_saved,
                                                                                                     abs=1e-3)
            assert page.text_content("#bill-saved") == f"{stats['bill_saved_ratio'] * 100:.1f}%"

            # By model: every chat request under its model, busiest first, figures as in the headers.
            models = _table(page, "#by-model")
            assert list(models) == ["gpt-4o-mini", "claude-sonnet-4-5", "dead-1"]
            assert models["gpt-4o-mini"]["requests"] == "5"
            assert models["gpt-4o-mini"]["tokens"] == (f"{sum(before) - before[4]:,} → "
                                                       f"{sum(after) - after[4]:,}")
            assert models["claude-sonnet-4-5"]["tokens"] == f"{before[4]:,} → {after[4]:,}"
            assert models["dead-1"]["errors"] == "1" and models["gpt-4o-mini"]["errors"] == "0"
            # By upstream: where each request went; the cache hit went nowhere.
            upstreams = _table(page, "#by-upstream")
            assert {name: row["requests"] for name, row in upstreams.items()} == \
                {"openai": "4", "anthropic": "1", "dead": "1", "": "1"}
            assert upstreams[""]["name"] == "not sent upstream (cache hits, refusals)"
            assert upstreams["dead"]["errors"] == "1"
            assert {name: row["retries"] for name, row in upstreams.items()} == \
                {"openai": "0", "anthropic": "0", "dead": "1", "": "0"}
            assert models["dead-1"]["retries"] == "1" and models["gpt-4o-mini"]["retries"] == "0"
            assert sum(int(row["requests"]) for row in upstreams.values()) == len(sent)
            row = page.locator('#by-upstream tbody tr[data-name="anthropic"]')
            assert float(row.get_attribute("data-cost-sent")) == pytest.approx(costs[-1][0], abs=0.5)
            assert row.locator("td.bill").text_content() == f"{costs[-1][0]:,.0f} / {costs[-1][1]:,.0f}"

            # The rewrites table: only the two requests sent rewritten, newest first.
            rows = page.locator("#rewrites tbody tr")
            newest = rows.nth(0)
            assert newest.locator("td.model").text_content() == "claude-sonnet-4-5"
            assert newest.locator("td.upstream").text_content() == "anthropic"
            assert newest.locator("td.decision").text_content() == rewrites[4]
            assert newest.locator("td.tokens").text_content() == f"{before[4]:,} → {after[4]:,}"
            assert newest.locator("td.status").text_content() == "200"
            assert rows.nth(1).locator("td.model").text_content() == "gpt-4o-mini"
            assert rows.nth(1).locator("td.tokens").text_content() == f"{before[3]:,} → {after[3]:,}"
            assert {rows.nth(i).get_attribute("data-decision") for i in range(2)} <= {"append", "compact"}

            # The chart drew the savings (bars) and at least one reduction-ratio point.
            assert page.locator("#savings-chart rect.bar").count() >= 1
            assert page.locator("#savings-chart circle.dot").count() >= 1
            assert page.locator("#traffic-chart rect.err").count() == 1

            shot = _save(page, "dashboard.png", tmp_path)
            assert shot.stat().st_size > 10_000
            page.emulate_media(color_scheme="dark")
            page.wait_for_timeout(100)
            _save(page, "dashboard-dark.png", tmp_path)

            assert outside == [], f"the page loaded something from elsewhere: {outside}"
            assert page_errors == [], page_errors
        finally:
            context.close()


def _table(page, selector: str) -> dict[str, dict[str, str]]:
    """A breakdown table's rows by data-name: each cell's text by its class."""
    return page.eval_on_selector_all(selector + " tbody tr", """rows => Object.fromEntries(rows.map(r => [
        r.dataset.name, Object.fromEntries([...r.cells].map(c => [c.classList[0] === 'num' ? c.classList[1]
                                                                  : c.classList[0], c.textContent]))]))""")


def _stats_with_gaps(now: int) -> dict:
    """A stats answer (a real LiveStats snapshot) whose series has traffic in
    runs of seconds with idle gaps between them, and more models than are
    tracked by name."""
    stats = LiveStats()
    for i in range(MODELS_TRACKED + 3):
        record = RequestRecord(route="chat_completions", method="POST", path="/v1/chat/completions",
                               dialect="openai", model=f"model-{i:02d}", upstream="openai", status=200,
                               cache="miss", rewrite="compact", tokens_before=1000, tokens_after=400 + i)
        stats.observe(record)
    snapshot = stats.snapshot()
    busy = [now - 40, now - 39, now - 38, now - 20, now - 19, now - 10]   # three runs: 3 s, 2 s, 1 s
    snapshot["series"] = [{"t": t, "requests": 2, "errors": 0, "tokens_saved": 500, "reduction_ratio": 0.5}
                          for t in busy]
    # a second with only forwarded requests: traffic, but no ratio to draw
    snapshot["series"].insert(3, {"t": now - 37, "requests": 1, "errors": 0, "tokens_saved": 0,
                                  "reduction_ratio": None})
    return snapshot


def test_dashboard_breaks_lines_across_idle_gaps_and_folds_models_past_the_bound(browser, fake_upstream_server,
                                                                                  monkeypatch):
    monkeypatch.delenv(ADMIN_ENV, raising=False)
    with serve_proxy(_config(fake_upstream_server.url)) as url:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        now = int(time.time())
        answer = json.dumps(_stats_with_gaps(now))
        page.route("**/_ctxwarden/stats", lambda route: route.fulfill(
            status=200, body=answer, headers={"content-type": "application/json"}))
        try:
            page.goto(f"{url}/_ctxwarden/dashboard?window=60")
            _wait_value(page, "#requests", str(MODELS_TRACKED + 3))
            d = page.get_attribute("#savings-chart path.ratio", "d")
            runs = [run.split("L") for run in d.replace(" ", "").split("M")[1:]]
            assert [len(run) for run in runs] == [3, 2, 1], d
            slot = float(runs[0][1].split(",")[0]) - float(runs[0][0].split(",")[0])
            assert slot > 0
            for run in runs:
                xs = [float(point.split(",")[0]) for point in run]
                assert all(b - a == pytest.approx(slot, abs=0.02) for a, b in zip(xs, xs[1:])), d
            assert page.locator("#savings-chart circle.dot").count() == 6
            assert page.locator("#traffic-chart rect.req").count() == 7

            models = _table(page, "#by-model")
            assert len(models) == MODELS_TRACKED + 1
            other = page.locator('#by-model tbody tr[data-other="true"]')
            assert other.locator("td.name").text_content() == "other models"
            assert other.get_attribute("data-requests") == "3"
            assert list(models)[-1] == "", "other models come last"
        finally:
            context.close()


def test_dashboard_says_when_the_token_is_wrong(browser, fake_upstream_server, monkeypatch):
    """Opened with a wrong token the page itself is refused; when the token is
    rotated while the page is open, the page says it needs the admin token."""
    monkeypatch.setenv(ADMIN_ENV, ADMIN_TOKEN)
    with serve_proxy(_config(fake_upstream_server.url)) as url:
        context = browser.new_context()
        page = context.new_page()
        try:
            assert page.goto(f"{url}/_ctxwarden/dashboard?token=wrong").status == 401
            page.goto(f"{url}/_ctxwarden/dashboard?token={ADMIN_TOKEN}")
            # (not "#requests == 0": Chromium fetched /favicon.ico for the 401 page above,
            # which the proxy forwarded and counted)
            page.wait_for_function("document.querySelector('#status').dataset.state === 'live'",
                                   timeout=TIMEOUT_MS)
            # The token is rotated while the page is open: the next poll is refused.
            monkeypatch.setenv(ADMIN_ENV, "rotated")
            page.wait_for_function("document.querySelector('#status').dataset.state === 'error'",
                                   timeout=TIMEOUT_MS)
            assert "admin token" in page.text_content("#message")
        finally:
            context.close()
