"""launch/: the launchers run against fake gcloud, srun, sbatch, scontrol, curl, uv and python.

Every fake records its argv (and a few environment variables) in one log; the tests assert the
exact commands a launcher runs. The fake `gcloud ... ssh --worker=all` runs the remote command in a
fake worker home whose `python3` is Python 3.10, like the TPU VM images, so the worker side (copy,
virtualenv, install, start) runs too. Nothing touches the network or installs anything.
"""

import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from tests import helpers

BASH = shutil.which('bash')
# The only real programs the launchers may call; everything else on PATH is a fake.
TOOLS = ['bash', 'sh', 'tar', 'gzip', 'mkdir', 'rm', 'cat', 'mktemp', 'dirname', 'basename', 'sed',
         'grep', 'tr', 'cut', 'head', 'tail', 'date', 'env', 'sleep', 'setsid', 'nohup',
         'hostname', 'mv', 'cp', 'chmod', 'ls', 'ln', 'touch']
ENV_KEYS = ['JAX_PROCESS_ID', 'JAX_NUM_PROCESSES', 'JAX_COORDINATOR_ADDRESS',
            'CUDA_VISIBLE_DEVICES', 'VIRTUAL_ENV', 'XLA_PYTHON_CLIENT_MEM_FRACTION']
PROBE = 'import sys; print("%d.%d" % sys.version_info[:2])'  # setup_venv.sh's version probe
UV_VERSION = '0.13.9'

# ---- the fakes ----------------------------------------------------------------------------------

RECORD_SH = r'''
# Sourced by every fake. One record per call: name, argv, then selected environment variables.
record() {
  local rec k
  printf -v rec '%s\x1f' "$@"
  rec+=$'\x1d\x1f'
  for k in ${FAKE_ENV_KEYS:-}; do
    if [[ -n "${!k+set}" ]]; then printf -v rec '%s%s=%s\x1f' "$rec" "$k" "${!k}"; fi
  done
  printf '%s\x1e' "$rec" >> "$FAKE_LOG"
}
make_fake_python() {  # NAME VERSION DEST
  sed -e "s/@NAME@/$1/" -e "s/@VERSION@/$2/" "$FAKE_LIB/python.template" > "$3"
  chmod +x "$3"
}
make_fake_venv() {  # DIR VERSION
  mkdir -p "$1/bin"
  local dir; dir="$(cd "$1" && pwd)"
  make_fake_python venv-python "$2" "$dir/bin/python"
  ln -sf python "$dir/bin/python3"
  printf 'export VIRTUAL_ENV=%q\nexport PATH="$VIRTUAL_ENV/bin:$PATH"\n' "$dir" > "$dir/bin/activate"
}
'''

PYTHON_TEMPLATE = r'''#!BASH
# Fake Python @VERSION@: answers the version probe, makes fake virtualenvs, "installs" uv.
source "$FAKE_LIB/record.sh"
record @NAME@ "$@"
case "${1:-}" in
  -c) echo "@VERSION@" ;;
  -m)
    case "${2:-}" in
      venv) make_fake_venv "${@: -1}" "@VERSION@" ;;
      pip)
        if [[ " $* " == *" --user "* ]]; then
          if [[ "${FAKE_PIP_USER_FAILS:-0}" == 1 ]]; then echo "error: externally-managed" >&2; exit 1; fi
          mkdir -p "$HOME/.local/bin" && cp "$FAKE_LIB/uv" "$HOME/.local/bin/uv"
        fi ;;
    esac ;;
esac
exit 0
'''

FAKE_UV = r'''#!BASH
source "$FAKE_LIB/record.sh"
record uv "$@"
if [[ "${1:-}" == venv ]]; then
  version=3.11; prev=''
  for a in "$@"; do if [[ "$prev" == --python ]]; then version="$a"; fi; prev="$a"; done
  make_fake_venv "${@: -1}" "$version"
fi
'''

FAKE_GCLOUD = r'''#!BASH
source "$FAKE_LIB/record.sh"
record gcloud "$@"
[[ "$1 $2 $3" == "compute tpus tpu-vm" ]] || { echo "fake gcloud: unexpected $*" >&2; exit 3; }
case "$4" in
  describe)
    if [[ -n "${FAKE_TPU_STATE:-}" ]]; then echo "$FAKE_TPU_STATE"; exit 0; fi
    echo "ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND" >&2; exit 1 ;;
  scp)
    if [[ -n "${FAKE_WORKER_HOME:-}" ]]; then cp "$5" "$FAKE_WORKER_HOME/${6#*:}"; fi ;;
  ssh)
    worker=''; command=''
    for a in "$@"; do
      case "$a" in --worker=*) worker="${a#--worker=}" ;; --command=*) command="${a#--command=}" ;; esac
    done
    if [[ -n "${FAKE_WORKER_HOME:-}" && "$worker" == all ]]; then
      cd "$FAKE_WORKER_HOME"
      rc=0; HOME="$FAKE_WORKER_HOME" bash -c "$command" || rc=$?
      # A real worker keeps main.py running; wait for the fake one so that its record is complete.
      if [[ -f ncsn_rin/train.pid ]]; then
        pid="$(cat ncsn_rin/train.pid)"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.02; done
      fi
      exit "$rc"
    fi ;;
esac
'''

FAKE_CURL = r'''#!BASH
source "$FAKE_LIB/record.sh"
record curl "$@"
case "${@: -1}" in
  */agent-worker-number) printf '%s' "${FAKE_WORKER_NUMBER:-0}" ;;
  */worker-network-endpoints) printf '%s' "${FAKE_ENDPOINTS:-unknown:unknown:10.0.0.2,unknown:unknown:10.0.0.3}" ;;
  https://astral.sh/uv/*/install.sh)
    echo 'mkdir -p "$UV_INSTALL_DIR" && cp "$FAKE_LIB/uv" "$UV_INSTALL_DIR/uv"' ;;
  *) exit 22 ;;
esac
'''

FAKE_SRUN = r'''#!BASH
source "$FAKE_LIB/record.sh"
record srun "$@"
if [[ -n "${FAKE_SRUN_SLEEP:-}" ]]; then exec sleep "$FAKE_SRUN_SLEEP"; fi
while [[ "$1" == --* ]]; do shift; done
rc=0
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$((i % SLURM_NTASKS_PER_NODE)) "$@" || rc=$?
done
exit "$rc"
'''

FAKE_SCONTROL = r'''#!BASH
source "$FAKE_LIB/record.sh"
record scontrol "$@"
if [[ "$1 $2" == "show hostnames" ]]; then
  # The pause lets a reader that stops after the first line close the pipe: SIGPIPE, as on a
  # cluster whose node list outgrows one write.
  for ((i = 1; i <= SLURM_JOB_NUM_NODES; i++)); do printf 'gpu%02d\n' "$i"; ((i > 1)) || sleep 0.2; done
fi
'''

# Like sbatch, but runs the job at once: the SLURM variables from the #SBATCH lines and options.
FAKE_SBATCH = r'''#!BASH
source "$FAKE_LIB/record.sh"
record sbatch "$@"
options=()
while [[ "$1" == --* ]]; do options+=("$1"); shift; done
script="$1"; shift
nodes=1; per_node=1
for o in $(sed -n 's/^#SBATCH //p' "$script") "${options[@]}"; do
  case "$o" in --nodes=*) nodes="${o#*=}" ;; --ntasks-per-node=*) per_node="${o#*=}" ;; esac
done
export SLURM_JOB_ID=4242 SLURM_SUBMIT_DIR="$PWD" SLURM_JOB_NUM_NODES="$nodes" \
  SLURM_NTASKS=$((nodes * per_node)) SLURM_NTASKS_PER_NODE="$per_node" \
  SLURM_JOB_NODELIST="gpu[01-$(printf %02d "$nodes")]"
exec bash "$script" "$@"
'''


class Any:
  """Matches any value in an expected command (a temporary file name, a long remote script)."""

  def __init__(self, check=lambda value: True):
    self.check = check

  def __eq__(self, other):
    return self.check(other)

  def __repr__(self):
    return '<any>'


class Call:

  def __init__(self, prog, argv, env):
    self.prog, self.argv, self.env = prog, argv, env

  @property
  def cmd(self):
    return [self.prog] + self.argv

  def __repr__(self):
    return f'Call({self.cmd!r}, env={self.env!r})'


class Sandbox:
  """A copy of the repository's launchers, a PATH of fakes and real basic tools, and a call log."""

  def __init__(self, tmp_path):
    self.tmp = tmp_path
    self.repo = tmp_path / 'repo'
    self.repo.mkdir()
    shutil.copytree(os.path.join(helpers.ROOT, 'launch'), self.repo / 'launch')
    shutil.copytree(os.path.join(helpers.ROOT, 'configs'), self.repo / 'configs',
                    ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copy(os.path.join(helpers.ROOT, 'requirements.txt'), self.repo)
    self.bin, self.lib, tools = (tmp_path / 'bin', tmp_path / 'lib', tmp_path / 'tools')
    for d in (self.bin, self.lib, tools):
      d.mkdir()
    for tool in TOOLS:
      os.symlink(shutil.which(tool), tools / tool)
    (self.lib / 'record.sh').write_text(RECORD_SH)
    (self.lib / 'python.template').write_text(PYTHON_TEMPLATE.replace('BASH', BASH))
    self._write(self.lib / 'uv', FAKE_UV)
    for name, text in [('gcloud', FAKE_GCLOUD), ('curl', FAKE_CURL), ('srun', FAKE_SRUN),
                       ('scontrol', FAKE_SCONTROL), ('sbatch', FAKE_SBATCH)]:
      self._write(self.bin / name, text)
    self.add_python('python3', '3.10')  # the TPU VM images' (Ubuntu 22.04) python3
    self.home = tmp_path / 'home'
    self.worker = tmp_path / 'worker'  # the home directory of the fake TPU worker
    (tmp_path / 'tmp').mkdir()
    self.home.mkdir()
    self.worker.mkdir()
    self.log = tmp_path / 'calls.log'
    self.env = {'PATH': f'{self.bin}:{tools}', 'HOME': str(self.home), 'LANG': 'C',
                'TMPDIR': str(tmp_path / 'tmp'), 'FAKE_LOG': str(self.log),
                'FAKE_LIB': str(self.lib), 'FAKE_ENV_KEYS': ' '.join(ENV_KEYS)}

  def _write(self, path, text):
    path.write_text(text.replace('#!BASH', '#!' + BASH))
    path.chmod(0o755)

  def add_python(self, name, version):
    text = (self.lib / 'python.template').read_text()
    self._write(self.bin / name, text.replace('@NAME@', name).replace('@VERSION@', version))

  def add_uv(self):
    shutil.copy(self.lib / 'uv', self.bin / 'uv')

  def make_venv(self, directory, version):
    subprocess.run([BASH, '-c', f'source {self.lib}/record.sh; make_fake_venv "$1" "$2"', '_',
                    str(directory), version], env=self.env, check=True)

  def run(self, command, *args, env=None, cwd=None, timeout=60):
    """Runs `command` (a launcher, or a bash script when it has a newline) in the sandbox."""
    full_env = dict(self.env, **(env or {}))
    argv = [BASH, '-c', command] if '\n' in command else [str(self.repo / command), *args]
    result = subprocess.run(argv, cwd=cwd or self.repo, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, timeout=timeout)
    return result

  def calls(self, *progs):
    if not self.log.exists():
      return []
    calls = []
    for record in self.log.read_text().split('\x1e')[:-1]:
      fields = record.split('\x1f')[:-1]
      sep = fields.index('\x1d')
      env = dict(item.split('=', 1) for item in fields[sep + 1:])
      call = Call(fields[0], fields[1:sep], env)
      # The version probes of setup_venv.sh are left out of the command sequences.
      if call.argv != ['-c', PROBE] and (not progs or call.prog in progs):
        calls.append(call)
    return calls

  def cmds(self, *progs):
    return [call.cmd for call in self.calls(*progs)]

  def clear_log(self):
    if self.log.exists():
      self.log.unlink()

  @property
  def slices_dir(self):
    return self.home / '.config' / 'ncsn_rin' / 'tpu_slices'


@pytest.fixture
def box(tmp_path):
  return Sandbox(tmp_path)


def assert_one_line_error(result, *fragments):
  """Exit status 2, exactly one line on stderr that contains every fragment, nothing on stdout."""
  assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
  lines = result.stderr.splitlines()
  assert len(lines) == 1, result.stderr
  assert result.stdout == '', result.stdout
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])
  assert 'Traceback' not in result.stderr
  return lines[0]


# ---- TPU: launch/tpu_pod.sh ---------------------------------------------------------------------

SLICE = ['--zone=us-central2-b']
TPU_ENV = {'TPU_NAME': 'rin-v4-32', 'ZONE': 'us-central2-b', 'ACCELERATOR_TYPE': 'v4-32',
           'WORKDIR': 'gs://test-bucket/rin_imagenet64', 'CONFIG': 'configs/rin_imagenet64.py'}
TPU_ARGS = ['--config.data.data_dir=gs://test-bucket/tensorflow_datasets']
COPY = ('mkdir -p ~/ncsn_rin && tar xzf ~/ncsn_rin.tar.gz -C ~/ncsn_rin && '
        'rm -f ~/ncsn_rin.tar.gz')
INSTALL = ("cd ~/ncsn_rin && INSTALL_UV=1 REPLACE_OLD_VENV=1 JAX_EXTRA=jax\\[tpu\\]==0.10.2 "
           "bash launch/setup_venv.sh")
TAIL = 'tail -n 100 -F ~/ncsn_rin/train.log'


def tpu(verb, *args, name='rin-v4-32', zone='us-central2-b'):
  return ['gcloud', 'compute', 'tpus', 'tpu-vm', verb, name, f'--zone={zone}', *args]


def describe(**kw):
  return tpu('describe', '--format=value(state)', **kw)


def create(accelerator='v4-32', runtime='tpu-ubuntu2204-base', *extra, **kw):
  return tpu('create', f'--accelerator-type={accelerator}', f'--version={runtime}', *extra, **kw)


def delete(**kw):
  return tpu('delete', '--quiet', **kw)


def start_command(workdir, config='configs/rin_imagenet64.py', mode='train'):
  prefix = f'CONFIG={config} WORKDIR={workdir} MODE={mode} ARGS='
  return Any(lambda value: value.startswith('--command=' + prefix) and 'main.py' in value)


def after_slice(workdir='gs://test-bucket/rin_imagenet64', **kw):
  """What ACTION=all runs once the slice exists: copy, install, start, stream the log."""
  return [
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', Any(lambda p: p.endswith('.tar.gz')),
       f'{kw.get("name", "rin-v4-32")}:ncsn_rin.tar.gz', f'--zone={kw.get("zone", "us-central2-b")}',
       '--worker=all'],
      tpu('ssh', '--worker=all', f'--command={COPY}', **kw),
      tpu('ssh', '--worker=all', f'--command={INSTALL}', **kw),
      tpu('ssh', '--worker=all', start_command(workdir), **kw),
      tpu('ssh', '--worker=0', f'--command={TAIL}', **kw),
  ]


# What the fresh worker (python3 = 3.10, no uv) runs: uv from PyPI, uv's CPython 3.11 for the venv.
WORKER_INSTALL = [
    ['python3', '-m', 'pip', 'install', '--quiet', '--user', f'uv=={UV_VERSION}'],
    ['uv', 'venv', '--seed', '--python', '3.11', '.venv'],
    ['venv-python', '-m', 'pip', 'install', '--quiet', '--upgrade', 'pip'],
    ['venv-python', '-m', 'pip', 'install', '--quiet', '-r', 'requirements.txt', 'jax[tpu]==0.10.2'],
]
WORKER_MAIN = ['venv-python', 'main.py', '--config=configs/rin_imagenet64.py',
               '--workdir=gs://test-bucket/rin_imagenet64', '--mode=train', *TPU_ARGS]


@pytest.mark.parametrize('state, slice_steps', [
    ('', [describe(), create()]),
    ('READY', [describe()]),
    ('PREEMPTED', [describe(), delete(), create()]),
], ids=['absent_create', 'ready_reuse', 'preempted_recreate'])
def test_tpu_all_runs_the_whole_job(box, state, slice_steps):
  result = box.run('launch/tpu_pod.sh', *TPU_ARGS,
                   env=dict(TPU_ENV, FAKE_TPU_STATE=state, FAKE_WORKER_HOME=str(box.worker)))
  assert result.returncode == 0, result.stderr
  assert box.cmds('gcloud') == slice_steps + after_slice()
  # Worker side: the checkout arrived, a Python 3.11 venv was made without the VM's python3 3.10,
  # and main.py started with its process index and worker 0's address from the metadata server.
  assert (box.worker / 'ncsn_rin' / 'configs' / 'rin_imagenet64.py').is_file()
  assert box.cmds('python3', 'uv', 'venv-python') == WORKER_INSTALL + [WORKER_MAIN]
  assert (box.worker / 'ncsn_rin' / '.venv' / 'bin' / 'python').is_file()
  main = box.calls('venv-python')[-1]
  assert main.env['JAX_PROCESS_ID'] == '0'
  assert main.env['JAX_NUM_PROCESSES'] == '2'
  assert main.env['JAX_COORDINATOR_ADDRESS'] == '10.0.0.2:8476'
  assert main.env['VIRTUAL_ENV'] == str(box.worker / 'ncsn_rin' / '.venv')
  # The slice and its settings are remembered for the follow-up commands.
  assert (box.slices_dir / 'last').read_text() == 'rin-v4-32\n'
  remembered = (box.slices_dir / 'rin-v4-32.env').read_text()
  assert 'ZONE=us-central2-b\n' in remembered
  assert 'WORKDIR=gs://test-bucket/rin_imagenet64\n' in remembered
  assert 'slice rin-v4-32 (TPU_NAME) in us-central2-b: v4-32 (4 host(s)), tpu-ubuntu2204-base' \
      in result.stdout


def test_tpu_install_reinstalls_only_when_requirements_change(box):
  env = dict(TPU_ENV, FAKE_WORKER_HOME=str(box.worker))
  assert box.run('launch/tpu_pod.sh', *TPU_ARGS, env=env).returncode == 0
  box.clear_log()
  result = box.run('launch/tpu_pod.sh', env=dict(env, ACTION='install'))
  assert result.returncode == 0, result.stderr
  assert box.cmds('gcloud') == [tpu('ssh', '--worker=all', f'--command={INSTALL}')]
  assert box.cmds('python3', 'uv', 'venv-python') == []  # the venv is up to date
  with open(box.worker / 'ncsn_rin' / 'requirements.txt', 'a') as f:
    f.write('# changed\n')
  box.clear_log()
  assert box.run('launch/tpu_pod.sh', env=dict(env, ACTION='install')).returncode == 0
  assert box.cmds('python3', 'uv', 'venv-python') == WORKER_INSTALL[2:]


def copy_to_worker(box):
  result = box.run('launch/tpu_pod.sh', env=dict(TPU_ENV, ACTION='copy',
                                                 FAKE_WORKER_HOME=str(box.worker)))
  assert result.returncode == 0, result.stderr
  box.clear_log()


def test_tpu_install_replaces_a_python310_venv_of_the_old_launcher(box):
  copy_to_worker(box)
  venv = box.worker / 'ncsn_rin' / '.venv'
  box.make_venv(venv, '3.10')  # what `python3 -m venv .venv` made on the VM before
  result = box.run('launch/tpu_pod.sh',
                   env=dict(TPU_ENV, ACTION='install', FAKE_WORKER_HOME=str(box.worker)))
  assert result.returncode == 0, result.stderr
  assert 'removing .venv (has Python 3.10, not 3.11-3.13)' in result.stdout
  assert box.cmds('python3', 'uv', 'venv-python') == WORKER_INSTALL


def test_tpu_install_uses_uv_installer_when_pip_user_fails(box):
  copy_to_worker(box)
  result = box.run('launch/tpu_pod.sh', env=dict(TPU_ENV, ACTION='install', FAKE_PIP_USER_FAILS='1',
                                                 FAKE_WORKER_HOME=str(box.worker)))
  assert result.returncode == 0, result.stderr
  assert box.cmds('python3', 'curl', 'uv')[:3] == [
      WORKER_INSTALL[0],
      ['curl', '-LsSf', f'https://astral.sh/uv/{UV_VERSION}/install.sh'],
      WORKER_INSTALL[1]]


@pytest.mark.parametrize('accelerator, runtime, hosts', [
    ('v4-8', 'tpu-ubuntu2204-base', 1),
    ('v5litepod-16', 'v2-alpha-tpuv5-lite', 2),
    ('v5p-8', 'v2-alpha-tpuv5', 1),
    ('v6e-64', 'v2-alpha-tpuv6e', 8),
])
def test_tpu_create_picks_runtime_version_from_generation(box, accelerator, runtime, hosts):
  result = box.run('launch/tpu_pod.sh', env={'ACTION': 'create', 'TPU_NAME': 'rin',
                                             'ZONE': 'zone-a', 'ACCELERATOR_TYPE': accelerator})
  assert result.returncode == 0, result.stderr
  assert box.cmds('gcloud') == [describe(name='rin', zone='zone-a'),
                                create(accelerator, runtime, name='rin', zone='zone-a')]
  assert f'{accelerator} ({hosts} host(s)), {runtime}' in result.stdout


def test_tpu_create_explicit_runtime_version_and_spot(box):
  result = box.run('launch/tpu_pod.sh', env={'ACTION': 'create', 'ACCELERATOR_TYPE': 'v4-16',
                                             'RUNTIME_VERSION': 'tpu-ubuntu2204-base-next',
                                             'SPOT': '1'})
  assert result.returncode == 0, result.stderr
  # No TPU_NAME and nothing remembered: create uses the default name; v4 the zone that has v4.
  assert box.cmds('gcloud') == [
      describe(name='ncsn-rin'),
      create('v4-16', 'tpu-ubuntu2204-base-next', '--spot', name='ncsn-rin')]


def test_tpu_follow_ups_act_on_the_remembered_slice(box):
  created = box.run('launch/tpu_pod.sh', env={
      'ACTION': 'create', 'TPU_NAME': 'rin-v5e', 'ZONE': 'europe-west4-b',
      'ACCELERATOR_TYPE': 'v5litepod-16', 'WORKDIR': 'gs://test-bucket/run', 'MODE': 'train'})
  assert created.returncode == 0, created.stderr
  here = dict(name='rin-v5e', zone='europe-west4-b')
  expected = {
      'logs': [tpu('ssh', '--worker=0', f'--command={TAIL}', **here)],
      'stop': [tpu('ssh', '--worker=all', '--command=cd ~/ncsn_rin && if [ -f train.pid ]; then '
                   'kill -TERM $(cat train.pid) || true; fi', **here)],
      'start': [tpu('ssh', '--worker=all', start_command('gs://test-bucket/run'), **here),
                tpu('ssh', '--worker=0', f'--command={TAIL}', **here)],
      'install': [tpu('ssh', '--worker=all', f'--command={INSTALL}', **here)],
      'delete': [delete(**here)],
  }
  for action, commands in expected.items():
    box.clear_log()
    result = box.run('launch/tpu_pod.sh', env={'ACTION': action})  # no TPU_NAME, no ZONE
    assert result.returncode == 0, (action, result.stderr)
    assert box.cmds('gcloud') == commands, action
    assert (f'ACTION={action} on slice rin-v5e (the slice created last by tpu_pod.sh; set TPU_NAME '
            'to act on another) in europe-west4-b: v5litepod-16 (2 host(s))') in result.stdout
  # delete forgot the slice: the next follow-up refuses instead of guessing a slice.
  assert not (box.slices_dir / 'rin-v5e.env').exists()
  assert not (box.slices_dir / 'last').exists()
  box.clear_log()
  result = box.run('launch/tpu_pod.sh', env={'ACTION': 'logs'})
  assert_one_line_error(result, 'TPU_NAME is not set', 'ACTION=logs')
  assert box.calls() == []


def test_tpu_environment_overrides_the_remembered_slice(box):
  assert box.run('launch/tpu_pod.sh', env={'ACTION': 'create', 'TPU_NAME': 'first',
                                           'ACCELERATOR_TYPE': 'v4-8'}).returncode == 0
  box.clear_log()
  # A slice tpu_pod.sh did not create: explicit TPU_NAME and ZONE are used as given.
  result = box.run('launch/tpu_pod.sh', env={'ACTION': 'delete', 'TPU_NAME': 'other',
                                             'ZONE': 'us-east5-b'})
  assert result.returncode == 0, result.stderr
  assert box.cmds('gcloud') == [delete(name='other', zone='us-east5-b')]
  assert (box.slices_dir / 'last').read_text() == 'first\n'  # the remembered slice is kept
  # Its zone is not guessed.
  box.clear_log()
  result = box.run('launch/tpu_pod.sh', env={'ACTION': 'delete', 'TPU_NAME': 'other'})
  assert_one_line_error(result, 'ZONE is not set', 'other')
  assert box.calls() == []


@pytest.mark.parametrize('action', ['logs', 'stop', 'start', 'delete'])
def test_tpu_follow_up_without_any_slice_refuses(box, action):
  result = box.run('launch/tpu_pod.sh', env={'ACTION': action, 'WORKDIR': 'gs://b/w'})
  assert_one_line_error(result, 'TPU_NAME is not set', f'ACTION={action}', 'set TPU_NAME')
  assert box.calls() == []


BAD_TPU_VALUES = [
    ({'WORKDIR': 'gs://YOUR_BUCKET/ncsn_rin/rin_imagenet64'}, [],
     ['WORKDIR=gs://YOUR_BUCKET/ncsn_rin/rin_imagenet64', 'placeholder YOUR_BUCKET']),
    ({}, ['--config.data.data_dir=gs://YOUR_BUCKET/tensorflow_datasets'],
     ['--config.data.data_dir=gs://YOUR_BUCKET/tensorflow_datasets', 'placeholder YOUR_BUCKET']),
    ({'WORKDIR': ''}, [], ['WORKDIR is not set', 'gs://BUCKET/PATH']),
    ({'WORKDIR': '/home/me/runs/rin'}, [],
     ['WORKDIR=/home/me/runs/rin is not a gs:// path', '4 hosts of v4-32', 'gs://BUCKET/PATH']),
    ({'ACCELERATOR_TYPE': 'v4_32'}, [], ['ACCELERATOR_TYPE=v4_32', 'v4-N, v5litepod-N']),
    ({'ACCELERATOR_TYPE': 'v6e-16', 'ZONE': ''}, [], ['ZONE is not set', 'v6e-16']),
    ({'MODE': 'trian'}, [], ['MODE=trian', 'train, sample']),
    ({'SPOT': 'yes'}, [], ['SPOT=yes', '0', '1']),
    ({'CONFIG': 'configs/rin_imagenet_64.py'}, [], ['CONFIG=configs/rin_imagenet_64.py', 'does not exist']),
    ({'TPU_NAME': 'Rin_v4'}, [], ['TPU_NAME=Rin_v4', 'lowercase']),
    ({'ACTION': 'deploy'}, [], ['ACTION=deploy', 'all, create']),
]


@pytest.mark.parametrize('env, args, fragments', BAD_TPU_VALUES,
                         ids=[f'{i}' for i in range(len(BAD_TPU_VALUES))])
def test_tpu_bad_values_stop_before_anything_is_created(box, env, args, fragments):
  result = box.run('launch/tpu_pod.sh', *args, env=dict(TPU_ENV, **env))
  assert_one_line_error(result, 'tpu_pod.sh: ', *fragments)
  assert box.calls() == []  # not even gcloud describe
  assert not box.slices_dir.exists()


def test_tpu_single_host_slice_may_use_a_local_workdir(box):
  result = box.run('launch/tpu_pod.sh', env=dict(TPU_ENV, ACTION='create', ACCELERATOR_TYPE='v6e-8',
                                                 ZONE='us-east5-b', WORKDIR='/home/me/run'))
  assert result.returncode == 0, result.stderr
  assert box.cmds('gcloud')[-1] == create('v6e-8', 'v2-alpha-tpuv6e', zone='us-east5-b')


def test_tpu_without_gcloud_says_how_to_get_it(box):
  (box.bin / 'gcloud').unlink()
  result = box.run('launch/tpu_pod.sh', *TPU_ARGS, env=TPU_ENV)
  assert_one_line_error(result, 'gcloud is not on PATH', 'https://cloud.google.com/sdk')


# ---- one machine: launch/local.sh and launch/setup_venv.sh -------------------------------------

LOCAL_INSTALL = [
    ['venv-python', '-m', 'pip', 'install', '--quiet', '--upgrade', 'pip'],
    ['venv-python', '-m', 'pip', 'install', '--quiet', '-r', 'requirements.txt'],
]
LOCAL_RUN = [
    ['venv-python', '-c', 'import jax; print("JAX", jax.__version__, "devices:", jax.devices())'],
    ['venv-python', 'main.py', '--config=configs/rin_digits.py', '--workdir=workdirs/rin_digits',
     '--mode=train', '--config.train.num_steps=10'],
]


def test_local_makes_the_venv_with_python311_then_runs_main(box):
  box.add_python('python3.11', '3.11')
  result = box.run('launch/local.sh', '--config.train.num_steps=10')
  assert result.returncode == 0, result.stderr
  assert box.cmds() == ([['python3.11', '-m', 'venv', '.venv']] + LOCAL_INSTALL + LOCAL_RUN)
  assert 'creating .venv with' in result.stdout and '(Python 3.11)' in result.stdout
  # Second run: the venv is up to date.
  box.clear_log()
  result = box.run('launch/local.sh', '--config.train.num_steps=10')
  assert result.returncode == 0, result.stderr
  assert box.cmds() == LOCAL_RUN


def test_local_passes_the_accelerator_extra(box):
  box.add_python('python3.12', '3.12')
  result = box.run('launch/local.sh', '--config.train.num_steps=10',
                   env={'JAX_EXTRA': 'jax[cuda12]==0.10.2'})
  assert result.returncode == 0, result.stderr
  assert box.cmds()[:3] == [['python3.12', '-m', 'venv', '.venv'], LOCAL_INSTALL[0],
                            LOCAL_INSTALL[1] + ['jax[cuda12]==0.10.2']]


def test_local_uses_uv_when_no_python311_is_on_path(box):
  box.add_uv()
  result = box.run('launch/local.sh', '--config.train.num_steps=10')
  assert result.returncode == 0, result.stderr
  assert box.cmds() == ([['uv', 'venv', '--seed', '--python', '3.11', '.venv']] + LOCAL_INSTALL
                        + LOCAL_RUN)


@pytest.mark.parametrize('version', ['3.10', '3.14'])
def test_local_without_a_supported_python_exits_2(box, version):
  box.add_python('python3', version)
  result = box.run('launch/local.sh')
  assert_one_line_error(result, 'setup_venv.sh: no Python 3.11-3.13 on PATH',
                        f'python3 is {version}', 'INSTALL_UV=1', 'PYTHON=')
  assert box.cmds() == []
  assert not (box.repo / '.venv').exists()


def test_local_install_uv_fetches_uv_and_its_python311(box):
  result = box.run('launch/local.sh', '--config.train.num_steps=10', env={'INSTALL_UV': '1'})
  assert result.returncode == 0, result.stderr
  assert box.cmds()[:2] == WORKER_INSTALL[:2]
  assert (box.home / '.local' / 'bin' / 'uv').is_file()


def test_local_rejects_an_existing_unsupported_venv(box):
  box.add_python('python3.11', '3.11')
  box.make_venv(box.repo / '.venv', '3.10')
  result = box.run('launch/local.sh')
  assert_one_line_error(result, 'VENV=.venv has Python 3.10', 'rm -rf .venv')
  assert box.cmds() == []


@pytest.mark.parametrize('env, fragments', [
    ({'PYTHON': '/usr/bin/python3.9'}, ['PYTHON=/usr/bin/python3.9', 'python3.11']),
    ({'CONFIG': 'configs/nope.py'}, ['local.sh: CONFIG=configs/nope.py does not exist']),
    ({'MODE': 'sampel'}, ['local.sh: MODE=sampel']),
])
def test_local_bad_values_exit_2(box, env, fragments):
  box.add_python('python3.11', '3.11')
  result = box.run('launch/local.sh', env=env)
  assert_one_line_error(result, *fragments)
  assert box.cmds() == []


# ---- GPU cluster: launch/slurm_gpu.sbatch -------------------------------------------------------

def test_slurm_starts_one_process_per_node(box):
  box.make_venv(box.repo / '.venv', '3.11')
  result = box.run('launch/slurm_gpu.sbatch', 'configs/rin_imagenet64.py', '/shared/run',
                   '--config.train.batch_size=64',
                   env={'SLURM_JOB_ID': '4242', 'SLURM_SUBMIT_DIR': str(box.repo),
                        'SLURM_NTASKS': '2', 'SLURM_NTASKS_PER_NODE': '1',
                        'SLURM_JOB_NUM_NODES': '2', 'SLURM_JOB_NODELIST': 'gpu[01-02]'})
  assert result.returncode == 0, result.stderr
  venv = str(box.repo / '.venv')
  assert box.cmds('scontrol', 'srun') == [
      ['scontrol', 'show', 'hostnames', 'gpu[01-02]'],
      ['srun', '--kill-on-bad-exit=1', 'bash', '-c', Any(), venv, 'configs/rin_imagenet64.py',
       '/shared/run', '--config.train.batch_size=64']]
  mains = box.calls('venv-python')
  assert [m.cmd for m in mains] == [
      ['venv-python', 'main.py', '--config=configs/rin_imagenet64.py', '--workdir=/shared/run',
       '--mode=train', '--config.train.batch_size=64']] * 2
  for i, m in enumerate(mains):
    assert m.env == {'JAX_PROCESS_ID': str(i), 'JAX_NUM_PROCESSES': '2',
                     'JAX_COORDINATOR_ADDRESS': 'gpu01:24242', 'VIRTUAL_ENV': venv,
                     'XLA_PYTHON_CLIENT_MEM_FRACTION': '0.9'}
  assert 'Python 3.11' in result.stdout


def test_slurm_one_task_per_gpu_pins_each_task_to_its_gpu(box):
  box.make_venv(box.repo / '.venv', '3.11')
  result = box.run('sbatch --ntasks-per-node=4 launch/slurm_gpu.sbatch configs/rin_cifar10.py /w\n',
                   env={'ONE_TASK_PER_GPU': '1'})
  assert result.returncode == 0, result.stderr
  mains = box.calls('venv-python')
  assert [m.env['JAX_PROCESS_ID'] for m in mains] == [str(i) for i in range(8)]
  assert [m.env['CUDA_VISIBLE_DEVICES'] for m in mains] == ['0', '1', '2', '3'] * 2
  assert {m.env['JAX_NUM_PROCESSES'] for m in mains} == {'8'}


@pytest.mark.parametrize('venv_version, args, env, fragments', [
    (None, [], {}, ['has no bin/python', "JAX_EXTRA='jax[cuda12]==0.10.2' launch/setup_venv.sh"]),
    ('3.10', [], {}, ['has Python 3.10, not 3.11-3.13', 'launch/setup_venv.sh']),
    ('3.11', ['configs/rin_imagenet_64.py'], {}, ['CONFIG=configs/rin_imagenet_64.py does not exist']),
    ('3.11', ['configs/rin_cifar10.py', '/shared/YOUR_PROJECT/run'], {},
     ['/shared/YOUR_PROJECT/run contains the placeholder YOUR_PROJECT']),
], ids=['no_venv', 'python310_venv', 'missing_config', 'placeholder_workdir'])
def test_slurm_bad_setup_stops_before_srun(box, venv_version, args, env, fragments):
  if venv_version:
    box.make_venv(box.repo / '.venv', venv_version)
  box.clear_log()
  result = box.run('sbatch launch/slurm_gpu.sbatch ' + ' '.join(args) + '\n', env=env)
  assert_one_line_error(result, 'slurm_gpu.sbatch: ', *fragments)
  assert box.cmds('srun', 'scontrol', 'venv-python') == []


def test_slurm_outside_a_job_says_to_use_sbatch(box):
  result = box.run('launch/slurm_gpu.sbatch')
  assert_one_line_error(result, 'not inside a SLURM job', 'sbatch launch/slurm_gpu.sbatch')


def test_slurm_sigterm_forwards_and_requeues(box):
  box.make_venv(box.repo / '.venv', '3.11')
  proc = subprocess.Popen([str(box.bin / 'sbatch'), 'launch/slurm_gpu.sbatch'], cwd=box.repo,
                          env=dict(box.env, FAKE_SRUN_SLEEP='60'), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 30
  while not box.cmds('srun') and time.time() < deadline:
    time.sleep(0.05)
  time.sleep(0.2)  # srun has exec'd its sleep; the batch script waits for it
  proc.send_signal(signal.SIGTERM)  # what --signal=B:TERM@120 sends to the batch shell
  stdout, stderr = proc.communicate(timeout=30)
  assert proc.returncode == 0, stderr
  assert 'SIGTERM (time limit or preemption)' in stdout
  assert box.cmds('scontrol')[-1] == ['scontrol', 'requeue', '4242']


# ---- the README's commands, word for word --------------------------------------------------------

def readme_block(heading):
  text = open(os.path.join(helpers.ROOT, 'README.md')).read()
  section = text[text.index(heading):]
  section = section[:section.index('\n### ', 1)]
  return re.search(r'```bash\n(.*?)```', section, re.S).group(1)


def test_readme_tpu_commands_run_as_written(box):
  block = readme_block('### TPU pod (Cloud TPU VM slice)')
  assert 'YOUR_BUCKET' in block
  # As written, the placeholder stops the first command before anything is created.
  first = block.split('ACTION=')[0]
  assert_one_line_error(box.run(first + '\n'), 'placeholder YOUR_BUCKET')
  assert box.calls() == []
  # With a bucket filled in, every line works, and the follow-ups act on the slice created above.
  result = box.run(f'set -e\n{block.replace("YOUR_BUCKET", "test-bucket")}')
  assert result.returncode == 0, result.stderr
  assert box.cmds('gcloud') == [describe(), create()] + after_slice() + [
      tpu('ssh', '--worker=0', f'--command={TAIL}'),
      tpu('ssh', '--worker=all', '--command=cd ~/ncsn_rin && if [ -f train.pid ]; then '
          'kill -TERM $(cat train.pid) || true; fi'),
      delete()]


def test_readme_slurm_commands_run_as_written(box):
  block = readme_block('### GPU cluster (SLURM)')
  box.add_python('python3.11', '3.11')  # a login node with Python 3.11
  result = box.run(f'set -e\n{block}')
  assert result.returncode == 0, result.stderr
  assert box.cmds('python3.11', 'sbatch')[:1] == [['python3.11', '-m', 'venv', '.venv']]
  assert ['venv-python', '-m', 'pip', 'install', '--quiet', '-r', 'requirements.txt',
          'jax[cuda12]==0.10.2'] in box.cmds('venv-python')
  mains = [c for c in box.calls('venv-python') if c.argv[:1] == ['main.py']]
  assert [(m.argv, m.env['JAX_PROCESS_ID'], m.env['JAX_NUM_PROCESSES']) for m in mains] == (
      [(['main.py', '--config=configs/rin_imagenet64.py', '--workdir=/shared/runs/rin_imagenet64',
         '--mode=train'], str(i), '2') for i in range(2)]
      + [(['main.py', '--config=configs/ncsnv2_cifar10.py', '--workdir=/shared/runs/ncsn',
           '--mode=train', '--config.train.batch_size=512'], str(i), '4') for i in range(4)])
