"""The live dashboard in a real headless Chromium (Debian `chromium`), driven
with Playwright's Python package (no `playwright install`: the system browser
is launched by path).

The page is loaded against a running proxy (behind an admin token, passed as
?token=), traffic is sent (plain and rewritten chat requests in both dialects,
an upstream 500), and the figures on the page must change to what the
responses' headers say. Screenshots go to the test's tmp dir and to
bench/results/dashboard.png (+ dashboard-dark.png) for people to look at."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.conftest import serve_proxy
from tests.servers import REPO_ROOT

CHROMIUM = Path(os.environ.get("CTXWARDEN_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ADMIN_ENV = "CTXW_DASHBOARD_TEST_ADMIN"
ADMIN_TOKEN = "dash-admin-secret"
TIMEOUT_MS = 10_000  # the page polls every 2 s

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason=f"{CHROMIUM} is absent (Debian package `chromium`; "
                                       "scripts/system_deps.sh installs it)")


def _config(upstream_url: str) -> str:
    # budget 4000: a ~40k-token conversation gets rewritten, a short one does not.
    return f"""<performance_optimization>
  <token_management><budget>4000</budget></token_management>
  <admin token_env="{ADMIN_ENV}"/>
  <upstreams>
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
    with serve_proxy(_config(fake_upstream_server.url)) as url:
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
            chat({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello again"}]})
            chat({"model": "gpt-4o-mini", "messages": _long_conversation("alpha")})
            sent.append(client.post("/v1/messages", json={"model": "claude-sonnet-4-5", "max_tokens": 64,
                                                          "messages": _long_conversation("beta")},
                                    headers={"anthropic-version": "2023-06-01"}))
            chat({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "this one fails"}]},
                 **{"x-fake-status": "500"})
            client.close()

            assert [r.status_code for r in sent] == [200, 200, 200, 200, 500]
            rewrites = [r.headers.get("x-ctxwarden-rewrite") for r in sent]
            assert rewrites[2] in ("compact", "append") and rewrites[3] in ("compact", "append"), rewrites
            before = [int(r.headers["x-ctxwarden-tokens-before"]) for r in sent]
            after = [int(r.headers["x-ctxwarden-tokens-after"]) for r in sent]
            saved = sum(before) - sum(after)
            assert saved > 0

            _wait_value(page, "#requests", str(len(sent)))
            _wait_value(page, "#tokens-saved", str(saved))
            _wait_value(page, "#upstream-errors", "1")
            page.wait_for_function("document.querySelectorAll('#rewrites tbody tr').length === 5",
                                   timeout=TIMEOUT_MS)
            page.wait_for_function("Number(document.querySelector('#rps').dataset.value) > 0", timeout=TIMEOUT_MS)

            assert page.text_content("#requests") == "5"
            assert page.text_content("#tokens-saved") == f"{saved:,}"
            ratio = float(_value(page, "#reduction-ratio"))
            assert ratio == pytest.approx(1 - sum(after) / sum(before), abs=1e-4)
            assert page.text_content("#reduction-ratio") == f"{ratio * 100:.1f}%"
            assert page.text_content("#upstream-errors") == "1"
            assert "alert" in (page.get_attribute("#errors-card", "class") or "")
            assert float(_value(page, "#p50")) > 0 and float(_value(page, "#p99")) >= float(_value(page, "#p50"))
            assert page.text_content("#p99").endswith(("ms", " s"))

            stats = httpx.get(url + "/_ctxwarden/stats", headers={"x-ctxwarden-admin-token": ADMIN_TOKEN}).json()
            assert float(_value(page, "#cache-hit-rate")) == stats["cache_hit_rate"]
            # the bill with the prompt cache priced in, beside tokens saved
            assert 0 < stats["bill_saved_ratio"] < 1
            assert float(_value(page, "#bill-saved")) == stats["bill_saved_ratio"]
            assert page.text_content("#bill-saved") == f"{stats['bill_saved_ratio'] * 100:.1f}%"

            # The table: newest first, one row per chat request, counts as in the headers.
            rows = page.locator("#rewrites tbody tr")
            newest = rows.nth(0)
            assert newest.get_attribute("data-status") == "500"
            assert newest.locator("td.status").text_content() == "500"
            assert newest.locator("td.tokens").text_content() == f"{before[4]:,} → {after[4]:,}"
            rewritten = rows.nth(1)
            assert rewritten.locator("td.dialect").text_content() == "anthropic"
            assert rewritten.locator("td.decision").text_content() == rewrites[3]
            assert rewritten.locator("td.tokens").text_content() == f"{before[3]:,} → {after[3]:,}"
            assert rewritten.locator("td.status").text_content() == "200"
            assert rows.nth(2).locator("td.dialect").text_content() == "openai"
            assert rows.nth(2).locator("td.tokens").text_content() == f"{before[2]:,} → {after[2]:,}"

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
