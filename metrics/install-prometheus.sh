#!/usr/bin/env bash
# Install the Prometheus server and promtool, which the metrics tests need:
# `promtool check rules` / `promtool test rules` on metrics/rules/, and a real
# server scraping a live reconciler in tests/integration/test_prometheus_live.py.
#
# Idempotent: does nothing when both are already on PATH. Installs the Debian
# package `prometheus` (bookworm: 2.42) with apt-get, so it needs root and
# network access to the Debian mirror only. CI runs it before `make test`.
#
# The package's maintainer scripts would start a `prometheus` service (systemd
# unit or init script). Tests start their own server on a random port, so no
# daemon may be left behind: service starts are denied during the install with
# a temporary policy-rc.d (the Debian mechanism invoke-rc.d and
# deb-systemd-invoke both honour), and anything started anyway is stopped by
# its service name and pid file.
set -euo pipefail

have_tools() {
    command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1
}

print_versions() {
    prometheus --version 2>&1 | head -n 1
    promtool --version 2>&1 | head -n 1
}

if have_tools; then
    echo "install-prometheus: already installed"
    print_versions
    exit 0
fi

# Where it cannot install, it says how and leaves the decision to the tests:
# they skip without the tools, or fail when CI / RECONCILER_REQUIRE_PROMETHEUS
# is set -- and so does this script then.
cannot_install() {
    echo "install-prometheus: $1" >&2
    if [ -n "${CI:-}" ] || [ -n "${RECONCILER_REQUIRE_PROMETHEUS:-}" ]; then
        exit 1
    fi
    echo "install-prometheus: the Prometheus tests will be skipped" >&2
    exit 0
}

if [ "$(id -u)" -ne 0 ]; then
    cannot_install "prometheus/promtool not on PATH and not root; run this script as root, or:
  sudo apt-get install --no-install-recommends prometheus"
fi
if ! command -v apt-get >/dev/null 2>&1; then
    cannot_install "no apt-get here; install Prometheus (>= 2.37) so that 'prometheus' and
  'promtool' are on PATH"
fi

POLICY=/usr/sbin/policy-rc.d
created_policy=""
cleanup() {
    if [ -n "$created_policy" ]; then
        rm -f "$POLICY"
    fi
}
trap cleanup EXIT
if [ ! -e "$POLICY" ]; then
    # 101: "action not allowed" -- the package is installed, its service not started.
    printf '#!/bin/sh\nexit 101\n' >"$POLICY"
    chmod 0755 "$POLICY"
    created_policy=1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# No recommends: prometheus-node-exporter would be a second daemon to keep down.
apt-get install -y -qq --no-install-recommends prometheus >/dev/null

# Belt and braces: if a service came up regardless (a host whose policy allows
# it), stop exactly that service -- never by process name.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl stop prometheus.service 2>/dev/null || true
    systemctl disable prometheus.service 2>/dev/null || true
elif [ -x /etc/init.d/prometheus ]; then
    /etc/init.d/prometheus stop >/dev/null 2>&1 || true
fi
for pidfile in /run/prometheus/prometheus.pid /run/prometheus.pid; do
    if [ -f "$pidfile" ]; then
        pid="$(cat "$pidfile")"
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" || true
        fi
        rm -f "$pidfile"
    fi
done

if ! have_tools; then
    echo "install-prometheus: installed, but prometheus/promtool not on PATH" >&2
    exit 1
fi
print_versions
