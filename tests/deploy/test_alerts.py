"""deploy/prometheus: the alert rules load (promtool check rules), each alert
fires on synthetic series and stays quiet on healthy ones (promtool test
rules), and every metric they use is one ctxwarden actually exports."""

from __future__ import annotations

import re
import shutil
import subprocess

import httpx
import pytest
import yaml

from tests.conftest import serve_proxy
from tests.servers import REPO_ROOT, proxy_config_xml

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is absent (Debian package `prometheus`; "
                                                             "scripts/system_deps.sh installs it)")

# What an operator needs alerting on (issue 7); each must exist.
REQUIRED_ALERTS = {
    "CtxwardenUpstreamErrorRateHigh", "CtxwardenAddedLatencyHigh", "CtxwardenTokenReductionFalling",
    "CtxwardenCacheBackendFailing", "CtxwardenConfigReloadFailed",
}


def _rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=PROMETHEUS_DIR)


@needs_promtool
def test_promtool_check_rules():
    result = _promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_unit_tests_fire_each_alert():
    result = _promtool("test", "rules", ALERTS_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_test_case():
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    assert REQUIRED_ALERTS <= alerts
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    cases = [case for test in tests["tests"] for case in test["alert_rule_test"]]
    fired = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert alerts - fired == set(), "alerts no test case fires"
    assert alerts - quiet == set(), "alerts no test case checks as quiet"


def test_rules_are_labelled_and_described():
    for rule in _rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert "for" in rule, f"{rule['alert']}: no `for`, it would fire on a single evaluation"


def _exported_series(text: str) -> set[str]:
    """Series names a scrape of `text` can contain, from its # TYPE lines."""
    names: set[str] = set()
    for line in text.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split(" ", 3)
        if kind == "histogram":
            names |= {name + "_bucket", name + "_sum", name + "_count"}
        elif kind == "counter" and not name.endswith("_total"):
            names |= {name + "_total", name + "_created"}
        else:
            names.add(name)
    return names


def test_alerts_use_only_metrics_and_labels_ctxwarden_exports(fake_upstream_server):
    with serve_proxy(proxy_config_xml(fake_upstream_server.url)) as url:
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(url + "/v1/chat/completions", json=chat, timeout=10).status_code == 200
        text = httpx.get(url + "/metrics", timeout=10).text
    exported = _exported_series(text)
    used = {name for rule in _rules() for name in re.findall(r"\bctxwarden_[a-z0-9_]+", rule["expr"])}
    assert used, "no ctxwarden metric in the rules?"
    assert used - exported == set(), f"not exported by /metrics: {sorted(used - exported)}"
    # Label matchers in the rules name labels the series really carry
    # (checked on the series one chat request produced).
    for rule in _rules():
        for metric, matchers in re.findall(r"(ctxwarden_[a-z0-9_]+)\{([^}]*)\}", rule["expr"]):
            samples = [line for line in text.splitlines() if line.startswith(metric + "{")]
            assert samples, f"{rule['alert']}: no {metric} series after a chat request"
            for label in re.findall(r"([a-zA-Z_]+)\s*(?:=~|!=|!~|=)", matchers):
                assert any(f'{label}="' in line for line in samples), (rule["alert"], metric, label)
