#!/usr/bin/env bash
# Installs the reference proxies that `canary-bench compare` measures canary-proxy against:
# NGINX and HAProxy from Debian's packages, nothing else. `compare` writes their configurations
# itself (the same 95/5 split, keep-alive to the upstreams) into a temporary directory, or into
# --config-dir DIR to keep them. CI does not need them: `compare` skips a proxy that is absent.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# nginx-light is the smallest build with the upstream and proxy modules; fall back to nginx.
if apt-cache show nginx-light >/dev/null 2>&1; then
  $SUDO apt-get install -y -qq nginx-light haproxy
else
  $SUDO apt-get install -y -qq nginx haproxy
fi

# The packages may start system services on hosts with an init system; the benchmark starts its
# own instances on loopback ports, so the system ones are stopped if they run.
for service in nginx haproxy; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
    $SUDO systemctl stop "$service" || true
  fi
done

nginx -v
haproxy -v | head -n 1
