#!/usr/bin/env bash
# One-time set-up on a fresh machine: Debian packages (the Fashion-MNIST files; tcmalloc, which
# the command-line entry points preload, see spikejax/allocator.py), a virtualenv in .venv, and
# spikejax with its data and test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=()
[ -d /usr/share/datasets/fashion-mnist ] || PKGS+=(dataset-fashion-mnist)
ls /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4 >/dev/null 2>&1 || PKGS+=(libtcmalloc-minimal4)
if [ ${#PKGS[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${PKGS[@]}" >/dev/null
  else
    echo "warning: install ${PKGS[*]} (Fashion-MNIST files under" \
         "/usr/share/datasets/fashion-mnist; tcmalloc for speed)" >&2
  fi
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[data,test]"
# CI also installs the torch extra (reading official .pth checkpoints, tests/test_convert.py)
# when a local CPU wheel of torch is on pip's find-links path: PyPI's own Linux wheel of torch
# pulls in the CUDA libraries (gigabytes). Without one the .pth tests skip, saying why.
if [ -n "${CI:-}" ]; then
  TORCH_WHEEL=""
  for d in ${PIP_FIND_LINKS:-} /opt/wheels; do
    for w in "$d"/torch-*+cpu-*.whl; do [ -f "$w" ] && TORCH_WHEEL="$w" && break 2; done
  done
  if [ -n "$TORCH_WHEEL" ]; then
    python -m pip install -q "$TORCH_WHEEL"
  else
    echo "note: no local CPU wheel of torch; the .pth tests will skip" >&2
  fi
fi
