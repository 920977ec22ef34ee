#!/usr/bin/env bash
# The main job on one machine: sets up .venv, then pre-trains the open-vocabulary X-FM miniature
# (pretrained MiniLM language tower, synthetic scenes), evaluating on held-out data as it goes.
# Extra arguments are passed to xfm_jax.train, e.g. --config=configs/x2vlm_base.py:mini
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh requirements.txt
workdir="${WORKDIR:-runs/quickstart}"
echo "local.sh: training; checkpoints and logs in ${workdir}"
exec python -m xfm_jax.train --config=configs/xfm_base.py:mini --workdir="${workdir}" "$@"
