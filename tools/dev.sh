#!/usr/bin/env bash
# One entry point for a fresh machine: sets up everything, then runs the demo or the tests.
#
#   bash tools/dev.sh demo   # ingest server + capture streaming the mic (or bundled recording)
#   bash tools/dev.sh test   # the whole test suite (what CI runs)
#   bash tools/dev.sh serve  # just the ingest server on 127.0.0.1:8765 with ./data (flags pass through)
#
# It installs what it needs: Debian packages when run as root (PortAudio, PulseAudio, ALSA's
# pulse plugin, espeak-ng, sox), a venv in .venv, and the project with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
DEB_PACKAGES=(libportaudio2 pulseaudio pulseaudio-utils alsa-utils libasound2-plugins espeak-ng sox dbus-daemon dbus-session-bus-common chromium chromium-driver)

log() { printf '\033[1m[dev]\033[0m %s\n' "$*" >&2; }

install_system_packages() {
  local missing=()
  for p in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    log "missing Debian packages: ${missing[*]} (not root: install them with sudo apt-get install ${missing[*]})"
    return 0
  fi
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

setup_venv() {
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    log "Python 3.11 or newer is needed (python3 is $(python3 --version 2>&1))"
    exit 1
  fi
  if [ ! -x "$VENV/bin/python" ] || [ ! -x "$VENV/bin/pip" ]; then
    log "creating venv in .venv"
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
      # Debian's system Python ships venv separately
      if [ "$(id -u)" -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      fi
      rm -rf "$VENV"
      python3 -m venv "$VENV" || { log "python3 -m venv failed: install python3-venv"; exit 1; }
    fi
  fi
  local stamp="$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    log "installing Python dependencies"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[test,cluster]"
    rm -f "$VENV"/.installed-* && touch "$stamp"
  fi
}

cmd=${1:-}
shift || true
case "$cmd" in
  test)
    install_system_packages
    setup_venv
    log "ruff"
    "$VENV/bin/ruff" check capture uplink ingest_server tools tests
    log "mypy"
    "$VENV/bin/mypy" capture uplink ingest_server tools
    log "pytest"
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  demo)
    install_system_packages
    setup_venv
    exec "$VENV/bin/python" -m tools.demo "$@"
    ;;
  serve)
    install_system_packages
    setup_venv
    exec "$VENV/bin/echopanel-ingest" --host 127.0.0.1 --port 8765 --data-dir ./data "$@"
    ;;
  setup)
    install_system_packages
    setup_venv
    ;;
  *)
    echo "usage: bash tools/dev.sh {demo|test|serve|setup} [args...]" >&2
    exit 2
    ;;
esac
