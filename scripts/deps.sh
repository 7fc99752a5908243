#!/usr/bin/env bash
# Installs what clm needs on a Debian machine, only where missing.
# Sourced by scripts/run and scripts/test; safe to run twice.
set -euo pipefail

need_apt=()
command -v softhsm2-util >/dev/null 2>&1 || need_apt+=(softhsm2)
[ -e /usr/lib/softhsm/libsofthsm2.so ] || need_apt+=(softhsm2)
command -v pkcs11-tool >/dev/null 2>&1 || need_apt+=(opensc)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# For the README's curl walk-through.
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [ "${CLM_DEPS_TEST:-0}" = 1 ]; then
  command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
  # tests/audit.rs tampers with the SQLite databases directly.
  command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
fi

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need_apt[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install a Rust toolchain (1.94 or newer) first" >&2
  exit 1
fi

if [ "${CLM_DEPS_TEST:-0}" = 1 ]; then
  if ! command -v lint_pkix_cert >/dev/null 2>&1; then
    echo "installing pkilint from PyPI" >&2
    python3 -m pip install --quiet pkilint
    hash -r
  fi
  # tests/openapi.rs; its CLI changed between 3.x and 4.x.
  if ! command -v schemathesis >/dev/null 2>&1; then
    echo "installing schemathesis from PyPI" >&2
    python3 -m pip install --quiet 'schemathesis>=4.32,<5'
    hash -r
  fi
fi
