#!/bin/bash
# Train on a Cloud TPU VM pod slice (e.g. v4-32, v5litepod-64, v6e-64): every worker (host) runs the
# same main.py command; jax.distributed.initialize() finds the other workers by itself, each worker
# reads its own share of the data, and the global batch is split over every TPU chip.
#
# Expects: the gcloud CLI, authenticated (`gcloud auth login`) with a project set
# (`gcloud config set project PROJECT`); TPU quota for ACCELERATOR_TYPE in ZONE; a GCS bucket for
# WORKDIR (checkpoints, TensorBoard, samples; every worker writes its part of each checkpoint); the
# data set prepared in a gs:// TFDS data_dir (--config.data.data_dir=gs://...). Run it from the
# repository root of your workstation checkout. Steps (ACTION=all does all of them):
#   create  create the slice, or reuse it; a preempted/terminated slice is deleted and recreated
#   copy    copy this checkout to ~/ncsn_rin on every worker (or clone GIT_URL at GIT_REF)
#   install virtualenv + requirements.txt + jax[tpu] on every worker
#   start   start main.py on every worker in the background (survives a dropped ssh) and stream
#           worker 0's log here (Ctrl-C stops the streaming only)
#   logs    stream worker 0's log again        stop   SIGTERM: checkpoint, then exit 0
#   delete  delete the slice (the workdir in GCS stays)
# Arguments after the variables go to main.py (config overrides).
#
# Preemption: a preempted spot/preemptible slice sends SIGTERM to main.py on every worker; they agree
# on one step, save a checkpoint to WORKDIR and exit 0 (if the VMs vanish first, the last periodic
# checkpoint is used). Rerun the same command: the slice is recreated and training resumes from the
# last complete checkpoint in WORKDIR.
#
# Example:
#   TPU_NAME=rin-v4-32 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 \
#   RUNTIME_VERSION=tpu-ubuntu2204-base WORKDIR=gs://my-bucket/rin_imagenet64 \
#   CONFIG=configs/rin_imagenet64.py launch/tpu_pod.sh --config.data.data_dir=gs://my-bucket/tfds
#   ACTION=logs TPU_NAME=rin-v4-32 ZONE=us-central2-b launch/tpu_pod.sh
set -euo pipefail

# ---- settings --------------------------------------------------------------------------------
TPU_NAME="${TPU_NAME:-ncsn-rin}"                          # name of the TPU VM slice
ZONE="${ZONE:-us-central2-b}"                             # zone with quota for the accelerator
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"             # slice shape: v4-32 = 16 chips, 4 hosts
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}" # TPU VM software version
WORKDIR="${WORKDIR:-gs://YOUR_BUCKET/ncsn_rin/rin_imagenet64}"  # gs:// path shared by all workers
CONFIG="${CONFIG:-configs/rin_imagenet64.py}"             # experiment config (repo-relative)
MODE="${MODE:-train}"                                      # train|sample|eval|fid_stats|tune_noise
SPOT="${SPOT:-0}"                                          # 1 = spot (preemptible) capacity
GIT_URL="${GIT_URL:-}"                                     # clone this instead of copying the checkout
GIT_REF="${GIT_REF:-main}"
JAX_TPU="${JAX_TPU:-jax[tpu]==0.10.2}"                     # must match jax in requirements.txt
ACTION="${ACTION:-all}"                                    # all|create|copy|install|start|logs|stop|delete
# ----------------------------------------------------------------------------------------------

REMOTE_DIR='~/ncsn_rin'
cd "$(dirname "${BASH_SOURCE[0]}")/.."

on_all_workers() {  # runs a command on every worker at once
  gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker=all --command="$1"
}

slice_state() {
  gcloud compute tpus tpu-vm describe "${TPU_NAME}" --zone="${ZONE}" --format='value(state)' \
    2>/dev/null || true
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
    echo "creating ${ACCELERATOR_TYPE} slice ${TPU_NAME} in ${ZONE}"
    local capacity=()
    if [[ "${SPOT}" == 1 ]]; then capacity=(--spot); fi
    gcloud compute tpus tpu-vm create "${TPU_NAME}" --zone="${ZONE}" \
      --accelerator-type="${ACCELERATOR_TYPE}" --version="${RUNTIME_VERSION}" "${capacity[@]}"
  else
    echo "reusing slice ${TPU_NAME} (${state})"
  fi
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
  tarball="$(mktemp /tmp/ncsn_rin.XXXXXX.tar.gz)"
  tar czf "${tarball}" --exclude=.git --exclude=.venv --exclude=workdirs --exclude='__pycache__' .
  gcloud compute tpus tpu-vm scp "${tarball}" "${TPU_NAME}:/tmp/ncsn_rin.tar.gz" \
    --zone="${ZONE}" --worker=all
  rm -f "${tarball}"
  on_all_workers "mkdir -p ${REMOTE_DIR} && tar xzf /tmp/ncsn_rin.tar.gz -C ${REMOTE_DIR}"
}

install_requirements() {
  on_all_workers "cd ${REMOTE_DIR} && (test -x .venv/bin/python || python3 -m venv .venv) && \
    . .venv/bin/activate && pip install --quiet --upgrade pip && \
    pip install --quiet -r requirements.txt '${JAX_TPU}' \
      -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
}

# What every worker runs to start training (sent verbatim; CONFIG, WORKDIR, MODE, ARGS are set in
# front of it). The process index, the number of processes and the coordinator (worker 0) come from
# the TPU VM metadata, so main.py's jax.distributed.initialize() gets them explicitly.
read -r -d '' WORKER_START <<'REMOTE' || true
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

case "${ACTION}" in
  all) create_slice; copy_code; install_requirements; start_training "$@" ;;
  create) create_slice ;;
  copy) copy_code ;;
  install) install_requirements ;;
  start) start_training "$@" ;;
  logs) stream_logs ;;
  stop) stop_training ;;
  delete) gcloud compute tpus tpu-vm delete "${TPU_NAME}" --zone="${ZONE}" --quiet ;;
  *) echo "ACTION=${ACTION}: use all|create|copy|install|start|logs|stop|delete" >&2; exit 2 ;;
esac
