#!/usr/bin/env bash
# Installs everything Kaitian needs on a Debian 12 machine (run as root, no stdin needed)
# and builds the Swift package in release mode. Idempotent: a rerun only checks.
#
#   apt packages   redis-server iperf3 python3-venv iproute2 procps psmisc openssl (no service is started)
#   .venv/         Python venv at the repository root with torch, torchvision, numpy, pytest,
#                  scikit-learn, matplotlib and ruff (formatter and linter) from PyPI
#   .build/release kaitian and libKaitianC.so (swift build -c release)
#   kaitian        the PyTorch package in python/, installed editable into .venv, so
#                  `.venv/bin/python -c "import kaitian"` works and finds .build/release
#
# Environment: PYTHON=/path/to/python3 picks the interpreter for the venv.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DEBIAN_FRONTEND=noninteractive
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '==> %s\n' "$*"; }

APT_PACKAGES=(redis-server iperf3 python3-venv iproute2 procps psmisc openssl)
PIP_PACKAGES=(torch torchvision numpy pytest scikit-learn matplotlib ruff expecttest)
PIP_MODULES="torch, torchvision, numpy, pytest, sklearn, matplotlib, expecttest"

install_apt_packages() {
  local missing=() pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$pkg")
    fi
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    log "apt packages already installed"
    return
  fi
  log "installing apt packages: ${missing[*]}"
  # Keep package scripts from starting services (redis-server): policy-rc.d answering 101.
  local policy=/usr/sbin/policy-rc.d own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    own_policy=1
  fi
  local status=0
  { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } || status=$?
  if [ "$own_policy" -eq 1 ]; then rm -f "$policy"; fi
  return "$status"
}

# The venv's interpreter: $PYTHON, else pyenv's python3, else python3 on PATH, else Debian's.
python_candidates() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; fi
  echo /root/.pyenv/shims/python3
  command -v python3 || true
  echo /usr/bin/python3
}

create_venv() {
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import sys' 2>/dev/null; then
    log "venv .venv exists ($(.venv/bin/python --version))"
    return
  fi
  rm -rf .venv
  local python
  for python in $(python_candidates); do
    if [ -x "$python" ] && "$python" -m venv .venv 2>/dev/null; then
      log "created .venv with $python ($(.venv/bin/python --version))"
      return
    fi
    rm -rf .venv
  done
  echo "setup.sh: could not create .venv with any of: $(python_candidates | tr '\n' ' ')" >&2
  return 1
}

install_pip_packages() {
  if .venv/bin/python -c "import ${PIP_MODULES}" 2>/dev/null && [ -x .venv/bin/ruff ]; then
    log "python packages already installed (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
    return
  fi
  log "installing python packages into .venv: ${PIP_PACKAGES[*]} (torch is large, this takes minutes)"
  .venv/bin/python -m pip install -q --progress-bar off "${PIP_PACKAGES[@]}"
  .venv/bin/python -c "import ${PIP_MODULES}; print('==> torch', torch.__version__, 'torchvision', torchvision.__version__)"
}

build_swift() {
  if ! command -v swift >/dev/null 2>&1; then
    export PATH="/opt/swift/usr/bin:$PATH"
  fi
  log "building the Swift package (swift build -c release)"
  swift build -c release
  local artifact
  for artifact in .build/release/kaitian .build/release/libKaitianC.so; do
    if [ ! -e "$artifact" ]; then
      echo "setup.sh: release build did not produce $artifact" >&2
      return 1
    fi
  done
  log "built .build/release/kaitian and .build/release/libKaitianC.so"
}

# Editable, so the package finds the freshly built .build/release/libKaitianC.so in this tree.
install_kaitian_package() {
  if .venv/bin/python -m pip show -q kaitian >/dev/null 2>&1; then
    log "python package kaitian already installed (editable)"
    return
  fi
  log "installing the kaitian python package (pip install -e python)"
  .venv/bin/python -m pip install -q --no-deps -e python
}

install_apt_packages
create_venv
install_pip_packages
build_swift
install_kaitian_package
.venv/bin/python -c "import kaitian" || { echo "setup.sh: import kaitian failed" >&2; exit 1; }
log "setup done"
