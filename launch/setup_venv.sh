#!/bin/bash
# Make (or reuse) the virtualenv with a supported Python and install requirements.txt plus the
# accelerator's jax extra. local.sh runs it before every run; tpu_pod.sh runs it on every TPU worker;
# on a SLURM cluster run it once on a login node (see slurm_gpu.sbatch).
#
# Supported Python: 3.11, 3.12 or 3.13 (jax/jaxlib 0.10.2 and numpy 2.4.6 need >= 3.11;
# tensorflow-cpu 2.21 has no 3.14 wheels; the tests run on 3.11). The interpreter is, in order:
#   1. PYTHON, if set (it must be a supported version);
#   2. the first supported one of python3.11, python3.12, python3.13, python3 on PATH;
#   3. otherwise uv makes the virtualenv with its own CPython ${PYTHON_VERSION} (a standalone build
#      that uv downloads once into ~/.local/share/uv); uv is taken from PATH or ~/.local/bin, and with
#      INSTALL_UV=1 it is installed first into ~/.local/bin: `python3 -m pip install --user uv` (PyPI),
#      or, where the system pip cannot, uv's official installer (https://astral.sh/uv/<version>/install.sh).
# Why uv for the TPU VMs: every current TPU software version (tpu-ubuntu2204-base for v4 and older,
# v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e) is Ubuntu 22.04 with
# Python 3.10. uv needs no root and no apt: it comes from PyPI, which the install reaches anyway,
# and its Python from GitHub releases (python-build-standalone). The deadsnakes PPA would need
# sudo, apt (whose lock unattended-upgrades holds on a freshly booted VM) and Launchpad.
#
# Settings (environment; defaults in brackets):
#   VENV              virtualenv directory, relative to the repository root     [.venv]
#   JAX_EXTRA         extra requirement(s) for the accelerator, e.g. 'jax[tpu]==0.10.2' or
#                     'jax[cuda12]==0.10.2'                                      [none: CPU]
#   PYTHON            interpreter to make the virtualenv with                    [searched, see above]
#   PYTHON_VERSION    the CPython version uv installs                            [3.11]
#   INSTALL_UV        1 = install uv when no supported Python and no uv is found [0]
#   UV_VERSION        the uv version INSTALL_UV installs                         [0.13.9]
#   REPLACE_OLD_VENV  1 = remove a VENV whose Python is unsupported (else: error) [0]
# Installing is skipped while requirements.txt and JAX_EXTRA are unchanged since the last install.
# Bad settings stop with one line on stderr and exit status 2.
#
# Example:
#   launch/setup_venv.sh                                          # CPU
#   JAX_EXTRA='jax[cuda12]==0.10.2' launch/setup_venv.sh          # SLURM login node, NVIDIA GPUs
#   INSTALL_UV=1 JAX_EXTRA='jax[tpu]==0.10.2' launch/setup_venv.sh   # TPU VM (what tpu_pod.sh runs)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${VENV:-.venv}"
JAX_EXTRA="${JAX_EXTRA:-}"
PYTHON="${PYTHON:-}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
INSTALL_UV="${INSTALL_UV:-0}"
UV_VERSION="${UV_VERSION:-0.13.9}"
REPLACE_OLD_VENV="${REPLACE_OLD_VENV:-0}"
SUPPORTED='3.11-3.13'

die() { echo "setup_venv.sh: $*" >&2; exit 2; }

python_version() {  # "3.11" or nothing when $1 does not run
  "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true
}

described() {  # "has Python 3.10" or "has no runnable Python"
  if [[ -n "$1" ]]; then echo "has Python $1"; else echo "has no runnable Python"; fi
}

is_supported() {  # 3.11 <= $1 <= 3.13
  [[ "$1" =~ ^3\.([0-9]+)$ ]] && ((BASH_REMATCH[1] >= 11 && BASH_REMATCH[1] <= 13))
}

find_uv() {
  if command -v uv; then return 0; fi
  if [[ -x "${HOME}/.local/bin/uv" ]]; then echo "${HOME}/.local/bin/uv"; return 0; fi
  return 1
}

install_uv() {
  echo "installing uv ${UV_VERSION} into ~/.local/bin"
  python3 -m pip install --quiet --user "uv==${UV_VERSION}" ||
    curl -LsSf "https://astral.sh/uv/${UV_VERSION}/install.sh" |
    env UV_INSTALL_DIR="${HOME}/.local/bin" UV_NO_MODIFY_PATH=1 sh
}

make_venv() {
  local candidate path version uv
  if [[ -n "${PYTHON}" ]]; then
    version="$(python_version "${PYTHON}")"
    is_supported "${version}" || die "PYTHON=${PYTHON} $(described "${version}"), not ${SUPPORTED}: point PYTHON at a python3.11 (or unset it)"
    echo "creating ${VENV} with ${PYTHON} (Python ${version})"
    "${PYTHON}" -m venv "${VENV}"
    return
  fi
  for candidate in python3.11 python3.12 python3.13 python3; do
    path="$(command -v "${candidate}")" || continue
    version="$(python_version "${path}")"
    if is_supported "${version}"; then
      echo "creating ${VENV} with ${path} (Python ${version})"
      "${path}" -m venv "${VENV}"
      return
    fi
  done
  if ! uv="$(find_uv)"; then
    version="$(python_version python3)"
    [[ "${INSTALL_UV}" == 1 ]] || die "no Python ${SUPPORTED} on PATH (python3 is ${version:-missing}) and no uv: install python3.11, set PYTHON=/path/to/python3.11, or rerun with INSTALL_UV=1 to fetch uv and its CPython ${PYTHON_VERSION}"
    install_uv
    uv="$(find_uv)" || die "INSTALL_UV=1: uv ${UV_VERSION} could not be installed (pip --user and https://astral.sh/uv/${UV_VERSION}/install.sh both failed): install uv or python3.11 by hand"
  fi
  echo "creating ${VENV} with uv's CPython ${PYTHON_VERSION} (${uv})"
  "${uv}" venv --seed --python "${PYTHON_VERSION}" "${VENV}"
}

if [[ -e "${VENV}/bin/python" ]]; then
  version="$(python_version "${VENV}/bin/python")"
  if ! is_supported "${version}"; then
    [[ "${REPLACE_OLD_VENV}" == 1 ]] || die "VENV=${VENV} $(described "${version}"), not ${SUPPORTED}: remove it (rm -rf ${VENV}) or set VENV to a new directory"
    echo "removing ${VENV} ($(described "${version}"), not ${SUPPORTED})"
    rm -rf "${VENV}"
  fi
fi
if [[ ! -e "${VENV}/bin/python" ]]; then
  make_venv
  version="$(python_version "${VENV}/bin/python")"
  is_supported "${version}" || die "the new VENV=${VENV} $(described "${version}"), not ${SUPPORTED}: remove it and set PYTHON=/path/to/python3.11"
fi

# Install once per change of requirements.txt / JAX_EXTRA.
STAMP="${VENV}/.ncsn_rin_installed"
WANT="$(cat requirements.txt; echo "extra=${JAX_EXTRA}")"
if [[ -f "${STAMP}" ]] && [[ "$(cat "${STAMP}")" == "${WANT}" ]]; then
  echo "${VENV} (Python ${version}) is up to date"
  exit 0
fi
read -r -a extras <<< "${JAX_EXTRA}"
echo "installing requirements.txt ${extras[*]} into ${VENV} (Python ${version})"
"${VENV}/bin/python" -m pip install --quiet --upgrade pip
"${VENV}/bin/python" -m pip install --quiet -r requirements.txt "${extras[@]}"
printf '%s' "${WANT}" > "${STAMP}"
