#!/usr/bin/env bash
# Runs on every TPU VM worker (launch/tpu_pod.sh calls it with --worker=all): the project's .venv
# with requirements.txt plus jax[tpu] (the matching libtpu) of the version requirements.txt pins.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import ensurepip' 2>/dev/null; then
  # TPU VM images ship python3 without venv support.
  sudo apt-get -qq update && sudo apt-get -qq install -y python3-venv
fi
source launch/setup_env.sh requirements.txt
jax_version="$(sed -n 's/^jax==//p' requirements.txt)"
python -m pip install -q --disable-pip-version-check "jax[tpu]==${jax_version}"
# Imports only: touching the devices here would wait for the other workers of the slice.
python -c 'import jax, libtpu; print("tpu_setup.sh: jax", jax.__version__, "with libtpu")'
