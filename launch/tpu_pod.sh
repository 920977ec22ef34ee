#!/usr/bin/env bash
# Pre-training on a Cloud TPU VM pod slice, from a workstation with gcloud and this checkout:
#   1. AOT check here (xfm_jax.aot): the step must fit the chips' HBM, or nothing is rented.
#   2. Create the TPU VM, or reuse it (a preempted one is deleted and created again).
#   3. Copy the checkout (tracked and untracked, not ignored files) to every worker.
#   4. launch/tpu_setup.sh on every worker: .venv with requirements.txt and jax[tpu].
#   5. xfm_jax.train on every worker (--worker=all), logs streamed here. Workers join through
#      xfm_jax.distributed; run again after a preemption and training resumes from --workdir.
#
# Usage: launch/tpu_pod.sh --project=P --zone=Z --name=N --accelerator-type=v5p-16 \
#          --topology=v5p:2x2x2 --runtime-version=v2-alpha-tpuv5 --config=configs/xfm_base.py \
#          --workdir=gs://BUCKET/runs/xfm [--spot] [--dry-run] [--config.key=value ...]
# Every setting may instead come from the environment variable named in the error message.
# --dry-run prints the commands (shell-quoted) instead of running them.
# The AOT check runs with ${PYTHON:-python3}, which needs jax[tpu] (libtpu; no TPU needed).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

project="${XFM_TPU_PROJECT:-}"
zone="${XFM_TPU_ZONE:-}"
name="${XFM_TPU_NAME:-}"
accelerator_type="${XFM_TPU_ACCELERATOR_TYPE:-}"
topology="${XFM_TPU_TOPOLOGY:-}"
runtime_version="${XFM_TPU_RUNTIME_VERSION:-}"
config="${XFM_CONFIG:-}"
workdir="${XFM_WORKDIR:-}"
spot=()
dry_run=0
overrides=()
for arg in "$@"; do
  case "${arg}" in
    --project=*) project="${arg#*=}" ;;
    --zone=*) zone="${arg#*=}" ;;
    --name=*) name="${arg#*=}" ;;
    --accelerator-type=*) accelerator_type="${arg#*=}" ;;
    --topology=*) topology="${arg#*=}" ;;
    --runtime-version=*) runtime_version="${arg#*=}" ;;
    --config=*) config="${arg#*=}" ;;
    --workdir=*) workdir="${arg#*=}" ;;
    --spot) spot=(--spot) ;;
    --dry-run) dry_run=1 ;;
    --config.*) overrides+=("${arg}") ;;
    *) echo "tpu_pod.sh: unknown argument ${arg@Q} (see the usage at the top of $0)" >&2; exit 2 ;;
  esac
done

missing=()
for setting in project:XFM_TPU_PROJECT zone:XFM_TPU_ZONE name:XFM_TPU_NAME \
    accelerator-type:XFM_TPU_ACCELERATOR_TYPE topology:XFM_TPU_TOPOLOGY \
    runtime-version:XFM_TPU_RUNTIME_VERSION config:XFM_CONFIG workdir:XFM_WORKDIR; do
  flag="${setting%%:*}"
  variable="${flag//-/_}"
  [ -n "${!variable}" ] || missing+=("--${flag} (or ${setting#*:})")
done
if [ "${#missing[@]}" -gt 0 ]; then
  printf -v listed '%s, ' "${missing[@]}"
  echo "tpu_pod.sh: missing settings: ${listed%, }" >&2
  exit 2
fi

case "${workdir}" in
  gs://*) ;;
  *) echo "tpu_pod.sh: --workdir=${workdir@Q} must be a gs:// location: every worker writes its" \
          "shards of each checkpoint there, and a local path is each worker's own disk" >&2
     exit 2 ;;
esac
# The pod's compiled executables are cached beside the run, so a recreated VM compiles nothing
# (unless the overrides name another place).
cache_override=("--config.train.compilation_cache_dir=${workdir%/}/compilation_cache")
for override in "${overrides[@]}"; do
  case "${override}" in --config.train.compilation_cache_dir=*) cache_override=() ;; esac
done

quote() { printf '%q ' "$@"; }  # one shell word per argument, safe for any characters
run() {
  if [ "${dry_run}" = 1 ]; then
    quote "$@"; echo
  else
    "$@"
  fi
}

tpu=(gcloud compute tpus tpu-vm)
where=("--project=${project}" "--zone=${zone}")
archive="${TMPDIR:-/tmp}/xfm-jax-${name}.tar.gz"

# ---- 1. AOT: refuse a config that does not fit -----------------------------------------------
echo "tpu_pod.sh: AOT compile for ${topology}" >&2
(cd "${root}" && run "${PYTHON:-python3}" -m xfm_jax.aot "--config=${config}" \
    "--topology=${topology}" "${overrides[@]}") \
  || { echo "tpu_pod.sh: ${config} does not compile or fit on ${topology}; not launching" >&2
       exit 1; }

# ---- 2. create or reuse the TPU VM -------------------------------------------------------------
create=("${tpu[@]}" create "${name}" "${where[@]}" "--accelerator-type=${accelerator_type}"
        "--version=${runtime_version}" "${spot[@]}")
if [ "${dry_run}" = 1 ]; then
  echo "# when ${name} does not exist, or was preempted (after deleting it):"
  run "${create[@]}"
else
  state="$("${tpu[@]}" describe "${name}" "${where[@]}" --format='value(state)' 2>/dev/null \
           || true)"
  if [ "${state}" = PREEMPTED ] || [ "${state}" = TERMINATED ]; then
    echo "tpu_pod.sh: ${name} is ${state}; deleting and creating it again" >&2
    run "${tpu[@]}" delete "${name}" "${where[@]}" --quiet
    state=""
  fi
  if [ -z "${state}" ]; then
    run "${create[@]}"
  else
    echo "tpu_pod.sh: reusing ${name} (${state})" >&2
  fi
fi

# ---- 3 + 4. copy the checkout, set up every worker -------------------------------------------
list_files=(git -C "${root}" ls-files -z --cached --others --exclude-standard)
pack=(tar -czf "${archive}" -C "${root}" --null -T -)
if [ "${dry_run}" = 1 ]; then
  echo "$(quote "${list_files[@]}")| $(quote "${pack[@]}")"
else
  "${list_files[@]}" | "${pack[@]}"
fi
run "${tpu[@]}" scp "${archive}" "${name}:xfm-jax.tar.gz" "${where[@]}" --worker=all
setup="mkdir -p xfm-jax && tar -xzf xfm-jax.tar.gz -C xfm-jax && bash xfm-jax/launch/tpu_setup.sh"
run "${tpu[@]}" ssh "${name}" "${where[@]}" --worker=all "--command=${setup}"

# ---- 5. train on every worker ------------------------------------------------------------------
train="cd xfm-jax && .venv/bin/python -m xfm_jax.train $(quote "--config=${config}" \
    "--workdir=${workdir}" "${cache_override[@]}" "${overrides[@]}")"
run "${tpu[@]}" ssh "${name}" "${where[@]}" --worker=all "--command=${train}"
