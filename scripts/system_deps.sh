#!/usr/bin/env bash
# Install the system packages some tests need, only where missing (Debian/Ubuntu):
#
#   redis-server     tests of the Redis cache backend (they start their own)
#   chromium         tests/browser: the dashboard in a real headless browser
#   prometheus       promtool, for tests/deploy/test_alerts.py
#
# The tests start redis-server themselves and use only promtool, so the boot
# services these packages come with are kept from starting while they install
# (policy-rc.d) and are disabled afterwards: nothing keeps running on the
# machine or starts again at its next boot.
#
# Idempotent: with everything present it changes nothing and exits 0 (no
# `apt-get update`). Otherwise it runs `apt-get update` once and installs just
# the missing packages, as root or through passwordless sudo. Exits 1 when
# packages are missing and cannot be installed (not Debian, no root).
# CTXWARDEN_SKIP_SYSTEM_DEPS=1 skips it altogether (the tests that need these
# packages then skip themselves).
set -euo pipefail

PACKAGES=(redis-server chromium prometheus)
SERVICES=(redis-server prometheus)   # boot services those packages install

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
# Debian's invoke-rc.d and deb-systemd-invoke ask /usr/sbin/policy-rc.d before
# starting a service; exit code 101 means "not now". One that was there before
# is put back afterwards.
POLICY=${CTXWARDEN_POLICY_RC_D:-/usr/sbin/policy-rc.d}
saved=""
if [[ -e "$POLICY" ]]; then
  saved=$(mktemp)
  "${as_root[@]}" cp -p "$POLICY" "$saved"
fi
restore_policy() {
  if [[ -n "$saved" ]]; then "${as_root[@]}" mv "$saved" "$POLICY"; else "${as_root[@]}" rm -f "$POLICY"; fi
}
trap restore_policy EXIT
printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$POLICY" >/dev/null
"${as_root[@]}" chmod 0755 "$POLICY"

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
# Disabled as boot services, those this run installed only (a service the
# machine had before is its owner's business).
for svc in "${SERVICES[@]}"; do
  [[ " ${missing[*]} " == *" $svc "* ]] || continue
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    "${as_root[@]}" systemctl disable --now "$svc" >/dev/null 2>&1 || true
  elif command -v update-rc.d >/dev/null 2>&1; then
    "${as_root[@]}" update-rc.d "$svc" disable >/dev/null 2>&1 || true
  fi
done
echo "system_deps: done"
