#!/bin/bash
# One machine (CPU, one or more GPUs, or a single-host TPU VM): make a virtualenv, install the
# pinned requirements, run main.py.
#
# Expects: python3.11 (or python3) on PATH; run from anywhere (the script cd's to the repository
# root). Settings come from the environment (defaults in brackets):
#   CONFIG    experiment config            [configs/rin_digits.py]
#   WORKDIR   checkpoints, logs, samples   [workdirs/<config name>]
#   MODE      train|sample|eval|fid_stats|tune_noise  [train]
#   VENV      virtualenv directory         [.venv]
#   JAX_EXTRA extra pip requirement for the accelerator, e.g. "jax[cuda12]==0.10.2" on an NVIDIA
#             GPU or "jax[tpu]==0.10.2" on a TPU VM    [none: CPU]
# Any further arguments go to main.py unchanged (config overrides such as
# --config.train.batch_size=256). The install step is skipped when the virtualenv is up to date.
#
# Preemption / Ctrl-C: SIGTERM makes main.py save a checkpoint and exit 0; a hard kill loses at most
# the steps since the last checkpoint. Rerun the same command to resume from the last complete one.
#
# Example:
#   launch/local.sh                                                  # the 2-CPU digits demo
#   CONFIG=configs/rin_cifar10.py JAX_EXTRA='jax[cuda12]==0.10.2' launch/local.sh \
#       --config.train.batch_size=256
#   MODE=sample launch/local.sh                                      # samples of the digits run
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CONFIG="${CONFIG:-configs/rin_digits.py}"
NAME="$(basename "${CONFIG}" .py)"
WORKDIR="${WORKDIR:-workdirs/${NAME}}"
MODE="${MODE:-train}"
VENV="${VENV:-.venv}"
JAX_EXTRA="${JAX_EXTRA:-}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"

if [[ ! -x "${VENV}/bin/python" ]]; then
  echo "creating virtualenv ${VENV} with ${PYTHON}"
  "${PYTHON}" -m venv "${VENV}"
fi
# shellcheck disable=SC1091
. "${VENV}/bin/activate"

# Install once per change of requirements.txt / JAX_EXTRA.
STAMP="${VENV}/.ncsn_rin_installed"
WANT="$(cat requirements.txt; echo "extra=${JAX_EXTRA}")"
if [[ ! -f "${STAMP}" ]] || [[ "$(cat "${STAMP}")" != "${WANT}" ]]; then
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -r requirements.txt
  if [[ -n "${JAX_EXTRA}" ]]; then
    python -m pip install --quiet "${JAX_EXTRA}"
  fi
  printf '%s' "${WANT}" > "${STAMP}"
fi

python -c 'import jax; print("JAX", jax.__version__, "devices:", jax.devices())'
echo "running: python main.py --config=${CONFIG} --workdir=${WORKDIR} --mode=${MODE} $*"
exec python main.py --config="${CONFIG}" --workdir="${WORKDIR}" --mode="${MODE}" "$@"
