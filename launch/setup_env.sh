#!/usr/bin/env bash
# Creates or reuses the project's virtual environment (.venv) and installs a requirements file
# into it. Re-installs only when the requirements file changed (a hash stamp in .venv).
# Usage: source launch/setup_env.sh [requirements.txt]
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_req="${1:-requirements.txt}"
_python="${PYTHON:-python3}"
_venv="${XFM_VENV:-${_root}/.venv}"

if ! "${_python}" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "setup_env: need Python >= 3.10 as '${_python}' (set PYTHON=/path/to/python3)" >&2
  exit 1
fi
if [ ! -x "${_venv}/bin/python" ]; then
  echo "setup_env: creating virtual environment ${_venv}"
  "${_python}" -m venv "${_venv}"
  "${_venv}/bin/python" -m pip install -q --upgrade pip
fi
_stamp="${_venv}/.installed-$(basename "${_req}")"
_hash="$(cat "${_root}/${_req}" "${_root}/requirements.txt" "${_root}/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "${_stamp}" ] || [ "$(cat "${_stamp}")" != "${_hash}" ]; then
  echo "setup_env: installing ${_req} into ${_venv} (first time takes about a minute)"
  (cd "${_root}" && "${_venv}/bin/python" -m pip install -q --disable-pip-version-check \
      -r "${_req}" -e . 2> >(grep -v "^WARNING: Location" >&2))
  echo "${_hash}" > "${_stamp}"
fi
export PATH="${_venv}/bin:${PATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
