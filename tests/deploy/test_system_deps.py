"""scripts/system_deps.sh against stand-ins for dpkg-query, apt-get, update-rc.d
and systemctl (first on PATH), so nothing on this machine is installed or
changed: it installs only what is missing, keeps the boot services of what it
installs from starting and disables them, and installs nothing the tests do
not use."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.servers import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "system_deps.sh"

STUBS = {
    # installed packages are files in $STATE
    "dpkg-query": '[ -e "$STATE/${@: -1}" ] && echo "install ok installed"',
    # records its arguments, and for an install whether the policy says "do not start"
    "apt-get": '''echo "apt-get $*" >> "$STATE/log"
if [ "$1" = install ] || [[ " $* " == *" install "* ]]; then
  "$CTXWARDEN_POLICY_RC_D" redis-server start; echo "policy $?" >> "$STATE/log"
  for a in "$@"; do case "$a" in -*|install|Dpkg*) ;; *) touch "$STATE/$a";; esac; done
fi''',
    "update-rc.d": 'echo "update-rc.d $*" >> "$STATE/log"',
    "systemctl": 'echo "systemctl $*" >> "$STATE/log"',
    "id": 'echo 0',
}


def run_script(tmp_path: Path, installed: list[str]) -> tuple[subprocess.CompletedProcess, list[str], Path]:
    stubs, state = tmp_path / "bin", tmp_path / "state"
    stubs.mkdir()
    state.mkdir()
    for name, body in STUBS.items():
        path = stubs / name
        path.write_text(f"#!/usr/bin/env bash\n{body}\n")
        path.chmod(0o755)
    for package in installed:
        (state / package).touch()
    policy = tmp_path / "policy-rc.d"
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "STATE": str(state), "CTXWARDEN_POLICY_RC_D": str(policy),
           "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    log = (state / "log").read_text().splitlines() if (state / "log").exists() else []
    return done, log, policy


def test_installs_only_what_is_missing_and_leaves_services_disabled(tmp_path):
    done, log, policy = run_script(tmp_path, installed=["chromium"])
    assert done.returncode == 0, done.stderr
    (install,) = [line for line in log if line.startswith("apt-get") and " install " in f" {line} "]
    assert install.split()[-2:] == ["redis-server", "prometheus"]
    assert "chromium" not in install.split()
    assert "policy 101" in log, "services must not start while their packages install"
    assert not policy.exists(), "the temporary policy-rc.d is removed afterwards"
    for service in ("redis-server", "prometheus"):
        assert (f"update-rc.d {service} disable" in log or f"systemctl disable --now {service}" in log), log
    assert not any("chromium" in line for line in log if not line.startswith("apt-get"))


def test_changes_nothing_when_everything_is_there(tmp_path):
    done, log, policy = run_script(tmp_path, installed=["redis-server", "chromium", "prometheus"])
    assert done.returncode == 0, done.stderr
    assert log == [] and not policy.exists()


def test_installs_nothing_the_tests_do_not_use():
    packages = next(line for line in SCRIPT.read_text().splitlines() if line.startswith("PACKAGES="))
    assert packages == "PACKAGES=(redis-server chromium prometheus)"
    used = {"redis-server": "tests/redis_server.py", "chromium": "tests/browser/test_dashboard.py",
            "prometheus": "tests/deploy/test_alerts.py"}
    for package, user in used.items():
        assert (REPO_ROOT / user).exists(), package


def test_a_policy_that_was_there_is_put_back(tmp_path):
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(policy, 0o755)
    done, log, _ = run_script(tmp_path, installed=[])
    assert done.returncode == 0, done.stderr
    assert policy.read_text() == "#!/bin/sh\nexit 0\n"
