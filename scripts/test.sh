#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian 12 machine (system
# packages via apt, npm dependencies via npm ci), type-checks, then runs every test against
# the real components (Distribution registry, skopeo, containerd, umoci, tinyproxy).
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
for pair in docker-registry:docker-registry skopeo:skopeo containerd:containerd ctr:containerd umoci:umoci htpasswd:apache2-utils openssl:openssl nginx:nginx-light wrk:wrk curl:curl ss:iproute2 tinyproxy:tinyproxy; do
  bin=${pair%%:*}; pkg=${pair#*:}
  command -v "$bin" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "== installing system packages: ${need_pkgs[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "== npm ci"
  npm ci --no-audit --no-fund
fi

echo "== type-check"
npx tsc --noEmit -p .

echo "== tests"
exec npm test --silent
