#!/usr/bin/env bash
# Install the system packages some tests need, only where missing (Debian/Ubuntu):
#
#   redis-server     tests of the Redis cache backend
#   chromium         tests/browser: the dashboard in a real headless browser
#   chromium-driver  (chromedriver, for a Selenium fallback)
#   prometheus       promtool, for tests/deploy/test_alerts.py
#
# Idempotent: with everything present it changes nothing and exits 0 (no
# `apt-get update`). Otherwise it runs `apt-get update` once and installs just
# the missing packages, as root or through passwordless sudo. Exits 1 when
# packages are missing and cannot be installed (not Debian, no root).
# CTXWARDEN_SKIP_SYSTEM_DEPS=1 skips it altogether (the tests that need these
# packages then skip themselves).
set -euo pipefail

PACKAGES=(redis-server chromium chromium-driver prometheus)

if [[ "${CTXWARDEN_SKIP_SYSTEM_DEPS:-}" == "1" ]]; then
  echo "system_deps: skipped (CTXWARDEN_SKIP_SYSTEM_DEPS=1)"
  exit 0
fi

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  echo "system_deps: not a Debian-like system (no dpkg-query/apt-get); install by hand: ${PACKAGES[*]}" >&2
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "system_deps: missing ${missing[*]}, and not root (no passwordless sudo) to install them" >&2
  exit 1
fi

echo "system_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  -o Dpkg::Use-Pty=0 "${missing[@]}" >/dev/null
for pkg in "${missing[@]}"; do
  if ! installed "$pkg"; then
    echo "system_deps: $pkg did not install" >&2
    exit 1
  fi
done
echo "system_deps: done"
