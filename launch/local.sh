#!/usr/bin/env bash
# The main job on one machine: sets up .venv, then pre-trains the open-vocabulary X-FM miniature
# (pretrained MiniLM language tower, synthetic scenes), evaluating on held-out data as it goes.
#
# Two stages, each an ordinary resumable run:
#   1. WORKDIR-regions: the region stream alone (box + region ITC), 1,000 steps
#      (configs/xfm_base.py:mini_regions; REGION_STEPS=N changes the count, 0 skips the stage);
#   2. WORKDIR: the whole recipe (configs/xfm_base.py:mini), starting from stage 1's checkpoint.
# Why two: the from-scratch vision tower learns to ground only before the image-level ITC shapes
# it (docs/training.md, "The miniature: what it learns").
# Extra arguments go to stage 2. With a --config=... of your own, the run is that one config alone,
# e.g. --config=configs/x2vlm_base.py:mini. Run again, each stage resumes (a finished stage 1 is
# skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup_env.sh requirements.txt
workdir="${WORKDIR:-runs/quickstart}"
region_steps="${REGION_STEPS:-1000}"
own_config=0
for arg in "$@"; do
  if [[ "$arg" == --config=* ]]; then own_config=1; fi
done
if [[ "$own_config" == 0 && "$region_steps" != 0 ]]; then
  stage1="${workdir}-regions"
  # Done when its metrics.json (local or gs://, read through the path layer) is at the last step.
  if python -c "import sys; from xfm_jax import paths
sys.exit(paths.read_json(sys.argv[1] + '/metrics.json')['step'] < int(sys.argv[2]))" \
      "${stage1}" "${region_steps}" 2>/dev/null; then
    echo "local.sh: stage 1 already done (${stage1})"
  else
    echo "local.sh: stage 1 of 2, the region stream alone; checkpoints and logs in ${stage1}"
    python -m xfm_jax.train --config=configs/xfm_base.py:mini_regions --workdir="${stage1}" \
      --config.train.total_steps="${region_steps}"
  fi
  set -- --config.train.init_from="${stage1}" "$@"
  echo "local.sh: stage 2 of 2, all four streams from stage 1; checkpoints and logs in ${workdir}"
else
  echo "local.sh: training; checkpoints and logs in ${workdir}"
fi
exec python -m xfm_jax.train --config=configs/xfm_base.py:mini --workdir="${workdir}" "$@"
