#!/usr/bin/env bash
# One-shot accelerator check of the X-FM train step: device and peak, then X-FM base in bf16 on
# all four streams (reference schedule) and on each stream alone, with fused attention and remat
# on and off: compile time, planned memory, step time, examples/s, MFU. Needs jax (with its CUDA
# plugin on a GPU), flax, optax, absl and ml_collections; no TensorFlow, seqio or clu.
#
#   bash benchmarks/accelerator_check.sh            # on the accelerator machine, <= 8 minutes
#   bash benchmarks/accelerator_check.sh --tiny     # the same runs on the tiny model: checks
#                                                   # this script on a CPU
#
# ml_collections is pure Python; where the machine lacks it, put its wheel in .whl/ first
# (python3 -m pip download --no-deps -d .whl ml_collections==1.1.0) and this script installs it
# into /tmp/xfm_site. Environment: BATCH_SCALE (default 1/32 of the 8-GPU reference batch:
# text 64, image 24, image_text 24, region 24 images x 5 texts), BUDGET_S (default 450: runs
# that would start later are reported as skipped), STEPS (timed steps per run, default 5),
# LOG (default ${OUT:-/tmp}/accelerator_check.log).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TINY=0
[[ "${1:-}" == "--tiny" ]] && TINY=1
LOG=${LOG:-${OUT:-/tmp}/accelerator_check.log}
: > "$LOG"
start=$SECONDS
budget=${BUDGET_S:-450}

if ! $PY -c 'import ml_collections' 2>/dev/null; then
  wheel=$(ls .whl/ml_collections-*.whl 2>/dev/null | head -1)
  if [[ -z "$wheel" ]]; then
    echo "accelerator_check: ml_collections is missing and .whl/ holds no ml_collections wheel" >&2
    exit 1
  fi
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/xfm_site "$wheel" || exit 1
  export PYTHONPATH=/tmp/xfm_site${PYTHONPATH:+:$PYTHONPATH}
fi

# Device, the table's peak and a measured bf16 matmul rate (the ceiling the MFU is read against).
$PY - <<'EOF' 2>&1 | tee -a "$LOG"
import time
import jax
import jax.numpy as jnp
from xfm_jax import flops
device = jax.devices()[0]
print(f'jax {jax.__version__}; backend {jax.default_backend()}; {jax.device_count()} x '
      f'{device.device_kind}')
peak = flops.peak_flops_for(device.device_kind)
print('table peak (bf16 dense): ' + (f'{peak / 1e12:.0f} TFLOP/s' if peak else 'none (CPU)'))
size = 8192 if jax.default_backend() == 'gpu' else 1024
x = jax.random.normal(jax.random.key(0), (size, size), jnp.bfloat16)
f = jax.jit(lambda a: a @ a)
f(x).block_until_ready()
best = float('inf')
for _ in range(10):
    t = time.perf_counter(); f(x).block_until_ready(); best = min(best, time.perf_counter() - t)
print(f'measured bf16 matmul {size}^3: {2 * size ** 3 / best / 1e12:.3f} TFLOP/s')
EOF

if [[ $TINY == 1 ]]; then
  config=configs/xfm_base.py:tiny; scale=${BATCH_SCALE:-1}; steps=${STEPS:-1}
else
  config=configs/xfm_base.py; scale=${BATCH_SCALE:-0.03125}; steps=${STEPS:-5}
fi
# cuDNN flash attention on GPUs; elsewhere XLA's implementation of the same call.
fused=$($PY -c 'import jax; print("cudnn" if jax.default_backend() == "gpu" else "xla")')
common=(--config="$config" --config.model.dtype=bfloat16 --config.model.scan_layers=True
        --batch_scale="$scale" --steps="$steps")

# name | extra flags, most important first: the budget cuts from the end.
runs=(
  "all streams, fused, remat none|--config.model.attention_impl=$fused"
  "all streams, einsum, remat none|--config.model.attention_impl=einsum"
  "all streams, fused, remat full|--config.model.attention_impl=$fused --config.model.remat_policy=full"
  "text, fused, remat none|--config.model.attention_impl=$fused --streams=text --config.train.schedule=summed"
  "image, fused, remat none|--config.model.attention_impl=$fused --streams=image --config.train.schedule=summed"
  "image_text, fused, remat none|--config.model.attention_impl=$fused --streams=image_text --config.train.schedule=summed"
  "region, fused, remat none|--config.model.attention_impl=$fused --streams=region --config.train.schedule=summed"
  "all streams, einsum, remat full|--config.model.attention_impl=einsum --config.model.remat_policy=full"
)
summary=()
for run in "${runs[@]}"; do
  name=${run%%|*}; read -r -a extra <<< "${run#*|}"
  left=$((budget - (SECONDS - start)))
  if (( left < 30 )); then summary+=("$name|skipped: time budget"); continue; fi
  echo "=== $name ($((SECONDS - start)) s in)" | tee -a "$LOG"
  out=$(timeout "$left" $PY benchmarks/train_step.py "${common[@]}" "${extra[@]}" 2>&1)
  rc=$?
  echo "$out" >> "$LOG"
  grep -E '^(batch|compile|memory|step|  [a-z_]+ |model FLOPs|achieved)' <<< "$out"
  if (( rc != 0 )); then
    why=$(grep -m1 -oE 'RESOURCE_EXHAUSTED|out of memory|[A-Za-z]+Error: .{0,100}' <<< "$out")
    (( rc == 124 )) && why="stopped at the time budget (BUDGET_S)"
    summary+=("$name|failed (exit $rc): ${why:-see $LOG}")
    continue
  fi
  compile=$(grep -oP '^compile: \K[0-9.]+ s' <<< "$out")
  temp=$(grep -oP 'temporaries \K[0-9.]+ GB' <<< "$out")
  step=$(grep -oP '^step: \K[0-9.]+ ms' <<< "$out")
  rate=$(grep -E '^  [a-z_]+ ' <<< "$out" | awk '{printf "%s %s/s; ", $1, $2}')
  mfu=$(grep -oP 'MFU \K[0-9.]+%' <<< "$out")
  summary+=("$name|compile $compile, temporaries $temp, step $step, MFU $mfu; $rate")
done

{
  echo
  echo "=== summary ($config, bf16, batch_scale $scale, $((SECONDS - start)) s; fused = $fused)"
  for line in "${summary[@]}"; do printf '%-36s %s\n' "${line%%|*}" "${line#*|}"; done
} | tee -a "$LOG"
