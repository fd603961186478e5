#!/usr/bin/env bash
# Installs what building and testing AstraMQ needs on a Debian/Ubuntu machine,
# only when it is missing. Sourced by scripts/start and scripts/test.
set -euo pipefail

# command-on-PATH -> Debian package that provides it
declare -A ASTRAMQ_PACKAGES=(
  [cmake]=cmake
  [cc]=build-essential
  [redis-server]=redis-server
  [redis-cli]=redis-tools
  [mosquitto_pub]=mosquitto-clients
  [mosquitto_sub]=mosquitto-clients
  [prometheus]=prometheus
)

ensure_packages() {
  local missing=()
  for command in "$@"; do
    if ! command -v "$command" >/dev/null 2>&1; then
      missing+=("${ASTRAMQ_PACKAGES[$command]:-$command}")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "Installing missing packages: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# rustup components the checks need (`cargo fmt`, `cargo clippy`).
ensure_rust_components() {
  local component
  for component in "$@"; do
    local subcommand=${component/rustfmt/fmt}
    if ! cargo "$subcommand" --version >/dev/null 2>&1; then
      if ! command -v rustup >/dev/null 2>&1; then
        echo "cargo $subcommand not found and no rustup to add $component" >&2
        exit 1
      fi
      echo "Installing the $component component" >&2
      rustup component add "$component"
    fi
  done
}

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust from https://rustup.rs (stable, 1.85 or newer)" >&2
    exit 1
  fi
}

# paho-mqtt for Debian's /usr/bin/python3 (the WebSocket tests drive it
# with transport="websockets"). The python3 first on PATH may be another
# interpreter (pyenv) that does not see Debian's package: the tests call
# /usr/bin/python3 by its path.
ensure_python3_paho() {
  if /usr/bin/python3 -c "import paho.mqtt.client" >/dev/null 2>&1; then
    return 0
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "Installing missing packages: python3-paho-mqtt" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-paho-mqtt >/dev/null
}
