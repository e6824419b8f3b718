#!/bin/bash
# One machine (CPU, one or more GPUs, or a single-host TPU VM): make a virtualenv with Python 3.11-3.13,
# install the pinned requirements, run main.py.
#
# Expects: bash; python3.11 (or 3.12, 3.13) on PATH, or uv, or INSTALL_UV=1 (launch/setup_venv.sh
# explains the choice). Run it from anywhere (the script cd's to the repository root). Settings come
# from the environment (defaults in brackets):
#   CONFIG     experiment config            [configs/rin_digits.py]
#   WORKDIR    checkpoints, logs, samples   [workdirs/<config name>]
#   MODE       train|sample|eval|fid_stats|tune_noise  [train]
#   VENV       virtualenv directory         [.venv]
#   JAX_EXTRA  extra pip requirement for the accelerator, e.g. "jax[cuda12]==0.10.2" on an NVIDIA
#              GPU or "jax[tpu]==0.10.2" on a TPU VM    [none: CPU]
#   PYTHON, INSTALL_UV   which Python makes the virtualenv (see launch/setup_venv.sh)
# Any further arguments go to main.py unchanged (config overrides such as
# --config.train.batch_size=256). The install step is skipped when the virtualenv is up to date.
# Bad settings stop with one line on stderr and exit status 2.
#
# Preemption / Ctrl-C: SIGTERM makes main.py save a checkpoint and exit 0; a hard kill loses at most
# the steps since the last checkpoint. Rerun the same command to resume from the last complete one.
#
# Example:
#   launch/local.sh                                                  # the 2-CPU digits demo
#   CONFIG=configs/rin_cifar10.py JAX_EXTRA='jax[cuda12]==0.10.2' launch/local.sh \
#       --config.train.batch_size=256
#   MODE=sample launch/local.sh                                      # samples of the digits run
#   INSTALL_UV=1 JAX_EXTRA='jax[tpu]==0.10.2' launch/local.sh        # a single-host TPU VM
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { echo "local.sh: $*" >&2; exit 2; }

CONFIG="${CONFIG:-configs/rin_digits.py}"
NAME="$(basename "${CONFIG}" .py)"
WORKDIR="${WORKDIR:-workdirs/${NAME}}"
MODE="${MODE:-train}"
export VENV="${VENV:-.venv}"

[[ -f "${CONFIG}" ]] ||
  die "CONFIG=${CONFIG} does not exist: use a repository-relative config, e.g. CONFIG=configs/rin_digits.py"
case "${MODE}" in
  train | sample | eval | fid_stats | tune_noise) ;;
  *) die "MODE=${MODE} is not a mode: use train, sample, eval, fid_stats or tune_noise" ;;
esac

# The virtualenv (a supported Python, requirements.txt + JAX_EXTRA); its errors exit 2 as well.
bash launch/setup_venv.sh
# shellcheck disable=SC1091
. "${VENV}/bin/activate"

python -c 'import jax; print("JAX", jax.__version__, "devices:", jax.devices())'
echo "running: python main.py --config=${CONFIG} --workdir=${WORKDIR} --mode=${MODE} $*"
exec python main.py --config="${CONFIG}" --workdir="${WORKDIR}" --mode="${MODE}" "$@"
