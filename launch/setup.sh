#!/usr/bin/env bash
# One-time set-up on a fresh machine: the Fashion-MNIST Debian package, a virtualenv in
# .venv, and spikejax with its data and test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "warning: install the Fashion-MNIST files under /usr/share/datasets/fashion-mnist" >&2
  fi
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[data,test]"
