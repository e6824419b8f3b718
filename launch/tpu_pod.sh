#!/bin/bash
# Train on a Cloud TPU VM slice (e.g. v4-32, v5litepod-64, v6e-64): every worker (host) runs the
# same main.py command; jax.distributed.initialize() finds the other workers by itself, each worker
# reads its own share of the data, and the global batch is split over every TPU chip.
#
# Expects: bash and the gcloud CLI on your workstation, authenticated (`gcloud auth login`) with a
# project set (`gcloud config set project PROJECT`); TPU quota for ACCELERATOR_TYPE in ZONE; a GCS
# bucket for WORKDIR (checkpoints, TensorBoard, samples; every worker writes its part of each
# checkpoint); the data set prepared in a gs:// TFDS data_dir (--config.data.data_dir=gs://...).
# Run it from any directory of your checkout. Steps (ACTION=all does create, copy, install, start):
#   create  create the slice, or reuse it; a preempted/terminated slice is deleted and recreated;
#           then remember the slice's settings (see below)
#   copy    copy this checkout to ~/ncsn_rin on every worker (or clone GIT_URL at GIT_REF)
#   install launch/setup_venv.sh on every worker: the TPU VM images (Ubuntu 22.04) ship Python 3.10
#           but jax 0.10.2 needs >= 3.11, so uv (from PyPI) makes ~/ncsn_rin/.venv with its CPython
#           3.11; then requirements.txt and jax[tpu] (its libtpu wheel comes from PyPI)
#   start   start main.py on every worker in the background (survives a dropped ssh) and stream
#           worker 0's log here (Ctrl-C stops the streaming only)
#   logs    stream worker 0's log again        stop   SIGTERM: checkpoint, then exit 0
#   delete  delete the slice (the workdir in GCS stays) and forget its settings
# Arguments after the variables go to main.py (config overrides).
#
# Which slice: TPU_NAME if set; else the slice this script created (or reused) last; ACTION=all or
# create with neither makes 'ncsn-rin'. Other actions never guess a slice: without TPU_NAME and
# without a remembered slice they stop. Each create remembers the slice's settings (ZONE,
# ACCELERATOR_TYPE, RUNTIME_VERSION, WORKDIR, CONFIG, MODE, SPOT, GIT_URL, GIT_REF) in
# ${XDG_CONFIG_HOME:-~/.config}/ncsn_rin/tpu_slices/<TPU_NAME>.env; later commands for that slice
# use them for every variable the environment does not set, and print which slice they act on.
#
# Settings (environment, else remembered, else the default):
#   TPU_NAME          slice name (lowercase letters, digits, '-')        [remembered, else ncsn-rin]
#   ACCELERATOR_TYPE  v4-N, v5litepod-N, v5p-N, v6e-N (also v2-N, v3-N)   [v4-32: 16 chips, 4 hosts]
#   ZONE              a zone with quota for it                [us-central2-b for v4; else required]
#   RUNTIME_VERSION   TPU software version, by generation: v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5,
#                     v5litepod v2-alpha-tpuv5-lite, v4 and older tpu-ubuntu2204-base
#   WORKDIR           gs://BUCKET/PATH (a local path only on a 1-host slice)   [required to start]
#   CONFIG            experiment config, repository-relative  [configs/rin_imagenet64.py]
#   MODE              train|sample|eval|fid_stats|tune_noise  [train]
#   SPOT              1 = spot (preemptible) capacity         [0]
#   GIT_URL, GIT_REF  clone this instead of copying the checkout [copy; main]
#   JAX_TPU           the jax TPU requirement                 [jax[tpu]==<jax pin of requirements.txt>]
#   ACTION            all|create|copy|install|start|logs|stop|delete  [all]
# Bad or placeholder values (WORKDIR=gs://YOUR_BUCKET/..., a local WORKDIR on a multi-host slice, an
# unknown ACCELERATOR_TYPE, ...) stop before anything is created, with one line naming the
# variable, the value and the fix, and exit status 2.
#
# Preemption: a preempted spot/preemptible slice sends SIGTERM to main.py on every worker; they agree
# on one step, save a checkpoint to WORKDIR and exit 0 (if the VMs vanish first, the last periodic
# checkpoint is used). Rerun the same command: the slice is recreated and training resumes from the
# last complete checkpoint in WORKDIR.
#
# Example:
#   TPU_NAME=rin-v4-32 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 \
#   WORKDIR=gs://my-bucket/rin_imagenet64 CONFIG=configs/rin_imagenet64.py \
#     launch/tpu_pod.sh --config.data.data_dir=gs://my-bucket/tensorflow_datasets
#   ACTION=logs launch/tpu_pod.sh          # the slice created above (remembered)
#   ACTION=delete TPU_NAME=rin-v4-32 launch/tpu_pod.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { echo "tpu_pod.sh: $*" >&2; exit 2; }  # one line, exit status 2, nothing created

ACTION="${ACTION:-all}"
case "${ACTION}" in
  all | create | copy | install | start | logs | stop | delete) ;;
  *) die "ACTION=${ACTION} is not an action: use all, create, copy, install, start, logs, stop or delete" ;;
esac
command -v gcloud > /dev/null ||
  die "gcloud is not on PATH: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install), then gcloud auth login"

# ---- which slice, and its remembered settings ---------------------------------------------------
SLICES_DIR="${XDG_CONFIG_HOME:-${HOME}/.config}/ncsn_rin/tpu_slices"
REMEMBERED=(ZONE ACCELERATOR_TYPE RUNTIME_VERSION WORKDIR CONFIG MODE SPOT GIT_URL GIT_REF)

if [[ -n "${TPU_NAME:-}" ]]; then
  NAME_FROM='TPU_NAME'
elif [[ -s "${SLICES_DIR}/last" ]]; then
  TPU_NAME="$(cat "${SLICES_DIR}/last")"
  NAME_FROM='the slice created last by tpu_pod.sh; set TPU_NAME to act on another'
elif [[ "${ACTION}" == all || "${ACTION}" == create ]]; then
  TPU_NAME='ncsn-rin'
  NAME_FROM='default name'
else
  die "TPU_NAME is not set and tpu_pod.sh has created no slice yet: for ACTION=${ACTION} set TPU_NAME (and ZONE) of the slice"
fi
[[ "${TPU_NAME}" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die "TPU_NAME=${TPU_NAME} is not a valid slice name: use lowercase letters, digits and '-', starting with a letter"
SLICE_FILE="${SLICES_DIR}/${TPU_NAME}.env"

if [[ -f "${SLICE_FILE}" ]]; then  # fill in what the environment does not set
  while IFS= read -r line; do
    key="${line%%=*}"
    [[ " ${REMEMBERED[*]} " == *" ${key} "* ]] || continue
    if [[ -z "${!key+set}" ]]; then eval "${line}"; fi
  done < "${SLICE_FILE}"
fi

# ---- defaults -----------------------------------------------------------------------------------
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
[[ "${ACCELERATOR_TYPE}" =~ ^(v2|v3|v4|v5litepod|v5p|v6e)-([0-9]+)$ ]] ||
  die "ACCELERATOR_TYPE=${ACCELERATOR_TYPE} is not a TPU slice type: use v4-N, v5litepod-N, v5p-N or v6e-N (e.g. v4-32, v5litepod-64, v6e-64)"
GENERATION="${BASH_REMATCH[1]}"
SIZE="${BASH_REMATCH[2]}"
# Hosts: v2/v3/v4/v5p count TensorCores (2 per chip, 4 chips per host), v5litepod/v6e count chips
# (up to 8 per host); either way a slice of size N has ceil(N / 8) hosts.
HOSTS=$(((SIZE + 7) / 8))

case "${GENERATION}" in  # https://cloud.google.com/tpu/docs/runtimes (PyTorch and JAX)
  v6e) DEFAULT_RUNTIME='v2-alpha-tpuv6e' ;;
  v5p) DEFAULT_RUNTIME='v2-alpha-tpuv5' ;;
  v5litepod) DEFAULT_RUNTIME='v2-alpha-tpuv5-lite' ;;
  *) DEFAULT_RUNTIME='tpu-ubuntu2204-base' ;;
esac
RUNTIME_VERSION="${RUNTIME_VERSION:-${DEFAULT_RUNTIME}}"
CONFIG="${CONFIG:-configs/rin_imagenet64.py}"
MODE="${MODE:-train}"
SPOT="${SPOT:-0}"
GIT_URL="${GIT_URL:-}"
GIT_REF="${GIT_REF:-main}"
WORKDIR="${WORKDIR:-}"
JAX_VERSION="$(sed -n 's/^jax==\([^ #]*\).*/\1/p' requirements.txt)"
JAX_TPU="${JAX_TPU:-jax[tpu]==${JAX_VERSION}}"

if [[ -z "${ZONE:-}" ]]; then
  if [[ "${ACTION}" == all || "${ACTION}" == create ]] && [[ "${GENERATION}" == v4 ]]; then
    ZONE='us-central2-b'  # the zone that offers v4
  elif [[ "${ACTION}" == all || "${ACTION}" == create ]]; then
    die "ZONE is not set for a ${ACCELERATOR_TYPE} slice: set ZONE to a zone that offers ${GENERATION} and where you have quota (gcloud compute tpus accelerator-types list --zone=ZONE)"
  else
    die "ZONE is not set and slice ${TPU_NAME} was not created by tpu_pod.sh: set ZONE of the slice (gcloud compute tpus tpu-vm list --zone=ZONE)"
  fi
fi

# ---- checks: all before the first gcloud call ---------------------------------------------------
reject_placeholder() {  # $1 names the value $2 in the message
  if [[ "$2" =~ ([Yy][Oo][Uu][Rr][-_][A-Za-z0-9_-]*) ]]; then
    die "$1 contains the placeholder ${BASH_REMATCH[1]}: replace it with your own value (gcloud storage ls lists your buckets)"
  fi
}
for var in TPU_NAME ZONE ACCELERATOR_TYPE RUNTIME_VERSION WORKDIR CONFIG GIT_URL GIT_REF; do
  reject_placeholder "${var}=${!var}" "${!var}"
done
for arg in "$@"; do reject_placeholder "argument ${arg}" "${arg}"; done
[[ "${SPOT}" == 0 || "${SPOT}" == 1 ]] || die "SPOT=${SPOT} must be 0 (on-demand) or 1 (spot capacity)"
[[ -n "${JAX_VERSION}" ]] || die "requirements.txt pins no jax==VERSION: restore the jax pin (JAX_TPU needs it)"
if [[ "${ACTION}" == all || "${ACTION}" == create || "${ACTION}" == start ]]; then  # for main.py
  case "${MODE}" in
    train | sample | eval | fid_stats | tune_noise) ;;
    *) die "MODE=${MODE} is not a mode: use train, sample, eval, fid_stats or tune_noise" ;;
  esac
  if [[ -z "${GIT_URL}" && ! -f "${CONFIG}" ]]; then
    die "CONFIG=${CONFIG} does not exist in this checkout: use a repository-relative config, e.g. CONFIG=configs/rin_imagenet64.py"
  fi
fi
if [[ "${ACTION}" == all || "${ACTION}" == start ]]; then
  [[ -n "${WORKDIR}" ]] || die "WORKDIR is not set: set WORKDIR=gs://BUCKET/PATH, a bucket that the TPU VMs can write"
fi
if [[ -n "${WORKDIR}" && "${WORKDIR}" != gs://?* && "${HOSTS}" -gt 1 ]]; then
  die "WORKDIR=${WORKDIR} is not a gs:// path, but the ${HOSTS} hosts of ${ACCELERATOR_TYPE} must all write each checkpoint: use WORKDIR=gs://BUCKET/PATH"
fi

echo "tpu_pod.sh: ACTION=${ACTION} on slice ${TPU_NAME} (${NAME_FROM}) in ${ZONE}: ${ACCELERATOR_TYPE}" \
     "(${HOSTS} host(s)), ${RUNTIME_VERSION}${WORKDIR:+, workdir ${WORKDIR}}"

# ---- steps --------------------------------------------------------------------------------------
# shellcheck disable=SC2088  # '~' is expanded by the worker's shell
REMOTE_DIR='~/ncsn_rin'

on_all_workers() {  # runs a command on every worker at once
  gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker=all --command="$1"
}

slice_state() {
  gcloud compute tpus tpu-vm describe "${TPU_NAME}" --zone="${ZONE}" --format='value(state)' \
    2> /dev/null || true
}

remember_slice() {
  mkdir -p "${SLICES_DIR}"
  local var
  for var in "${REMEMBERED[@]}"; do printf '%s=%q\n' "${var}" "${!var}"; done > "${SLICE_FILE}"
  echo "${TPU_NAME}" > "${SLICES_DIR}/last"
}

forget_slice() {
  rm -f "${SLICE_FILE}"
  if [[ "$(cat "${SLICES_DIR}/last" 2> /dev/null)" == "${TPU_NAME}" ]]; then rm -f "${SLICES_DIR}/last"; fi
}

create_slice() {
  local state
  state="$(slice_state)"
  if [[ "${state}" == PREEMPTED || "${state}" == TERMINATED ]]; then
    echo "slice ${TPU_NAME} is ${state}: deleting it to recreate it"
    gcloud compute tpus tpu-vm delete "${TPU_NAME}" --zone="${ZONE}" --quiet
    state=''
  fi
  if [[ -z "${state}" ]]; then
    echo "creating ${ACCELERATOR_TYPE} slice ${TPU_NAME} in ${ZONE} (${RUNTIME_VERSION})"
    local capacity=()
    if [[ "${SPOT}" == 1 ]]; then capacity=(--spot); fi
    gcloud compute tpus tpu-vm create "${TPU_NAME}" --zone="${ZONE}" \
      --accelerator-type="${ACCELERATOR_TYPE}" --version="${RUNTIME_VERSION}" "${capacity[@]}"
  else
    echo "reusing slice ${TPU_NAME} (${state})"
  fi
  remember_slice
}

copy_code() {
  if [[ -n "${GIT_URL}" ]]; then  # fresh clone; the worker's .venv is kept
    on_all_workers "rm -rf ${REMOTE_DIR}.new && git clone --quiet ${GIT_URL} ${REMOTE_DIR}.new && \
      git -C ${REMOTE_DIR}.new checkout --quiet ${GIT_REF} && \
      (mv ${REMOTE_DIR}/.venv ${REMOTE_DIR}.new/ 2>/dev/null || true) && \
      rm -rf ${REMOTE_DIR} && mv ${REMOTE_DIR}.new ${REMOTE_DIR}"
    return
  fi
  local tarball
  tarball="$(mktemp "${TMPDIR:-/tmp}/ncsn_rin.XXXXXX.tar.gz")"
  tar czf "${tarball}" --exclude=.git --exclude=.venv --exclude=workdirs --exclude='__pycache__' \
    --exclude=.pytest_cache .
  gcloud compute tpus tpu-vm scp "${tarball}" "${TPU_NAME}:ncsn_rin.tar.gz" --zone="${ZONE}" --worker=all
  rm -f "${tarball}"
  on_all_workers "mkdir -p ${REMOTE_DIR} && tar xzf ~/ncsn_rin.tar.gz -C ${REMOTE_DIR} && rm -f ~/ncsn_rin.tar.gz"
}

install_requirements() {  # launch/setup_venv.sh explains where the worker's Python 3.11 comes from
  on_all_workers "cd ${REMOTE_DIR} && INSTALL_UV=1 REPLACE_OLD_VENV=1 JAX_EXTRA=$(printf %q "${JAX_TPU}") \
bash launch/setup_venv.sh"
}

# What every worker runs to start training (sent verbatim; CONFIG, WORKDIR, MODE, ARGS are set in
# front of it). The process index, the number of processes and the coordinator (worker 0) come from
# the TPU VM metadata, so main.py's jax.distributed.initialize() gets them explicitly.
read -r -d '' WORKER_START << 'REMOTE' || true
cd ~/ncsn_rin || exit 1
if [ -f train.pid ] && kill -0 "$(cat train.pid)" 2>/dev/null; then
  echo "$(hostname): main.py is already running (pid $(cat train.pid)); ACTION=stop first"; exit 1
fi
MD=http://metadata.google.internal/computeMetadata/v1/instance/attributes
ENDPOINTS="$(curl -s -H Metadata-Flavor:Google "$MD/worker-network-endpoints")"
export JAX_PROCESS_ID="$(curl -s -H Metadata-Flavor:Google "$MD/agent-worker-number")"
export JAX_NUM_PROCESSES="$(echo "$ENDPOINTS" | tr ',' '\n' | grep -c .)"
FIRST="$(echo "$ENDPOINTS" | cut -d, -f1)"  # worker 0: 'host' or 'name:id:ip'
export JAX_COORDINATOR_ADDRESS="${FIRST##*:}:8476"
export TF_CPP_MIN_LOG_LEVEL=2
. .venv/bin/activate
eval "set -- $ARGS"
setsid nohup python main.py --config="$CONFIG" --workdir="$WORKDIR" --mode="$MODE" "$@" \
  > train.log 2>&1 < /dev/null &
echo $! > train.pid
echo "$(hostname): process $JAX_PROCESS_ID of $JAX_NUM_PROCESSES started (pid $!)"
REMOTE

start_training() {
  local args=''
  if (($#)); then args="$(printf ' %q' "$@")"; fi
  # The same command on every worker.
  on_all_workers "CONFIG=$(printf %q "${CONFIG}") WORKDIR=$(printf %q "${WORKDIR}") \
MODE=$(printf %q "${MODE}") ARGS=$(printf %q "${args}"); ${WORKER_START}"
  stream_logs
}

stream_logs() {
  echo "streaming worker 0's log (Ctrl-C stops streaming only; training goes on)"
  gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker=0 \
    --command="tail -n 100 -F ${REMOTE_DIR}/train.log"
}

stop_training() {  # SIGTERM: all workers save one checkpoint at the same step, then exit 0
  on_all_workers "cd ${REMOTE_DIR} && if [ -f train.pid ]; then kill -TERM \$(cat train.pid) || true; fi"
}

delete_slice() {
  gcloud compute tpus tpu-vm delete "${TPU_NAME}" --zone="${ZONE}" --quiet
  forget_slice
}

case "${ACTION}" in
  all) create_slice; copy_code; install_requirements; start_training "$@" ;;
  create) create_slice ;;
  copy) copy_code ;;
  install) install_requirements ;;
  start) start_training "$@" ;;
  logs) stream_logs ;;
  stop) stop_training ;;
  delete) delete_slice ;;
esac
