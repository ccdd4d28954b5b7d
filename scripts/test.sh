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

# moto_server, the S3 server of the S3-tier tests (a Python package, not in Debian): the machine's
# python3 if it has it, else a venv under .cache/ (needs PyPI).
if ! python3 -c 'import moto.server' >/dev/null 2>&1; then
  venv=.cache/moto-venv
  if [ ! -x "$venv/bin/python3" ] || ! "$venv/bin/python3" -c 'import moto.server' >/dev/null 2>&1; then
    echo "== installing moto[server] into $venv"
    command -v python3 >/dev/null 2>&1 && python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || {
      if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-venv >/dev/null
    }
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'moto[server]>=5.1,<6'
  fi
  export MOTO_PYTHON="$PWD/$venv/bin/python3"
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "== npm ci"
  npm ci --no-audit --no-fund
fi

echo "== type-check"
npx tsc --noEmit -p .

echo "== tests"
exec npm test --silent
