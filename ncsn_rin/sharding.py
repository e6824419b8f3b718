"""Device mesh and shardings: batch over the 'data' axis; parameters replicated or FSDP-sharded.

One mesh axis, 'data', spans every device of every host. Batches are split along it. Parameters and
optimiser state are either replicated (default) or, with `config.sharding.fsdp`, each array is split
along its largest dimension divisible by the number of devices (ZeRO-3 / FSDP style: XLA inserts the
all-gathers and reduce-scatters), which is what lets the 320M–412M RIN configs fit per device.
"""

from typing import Any, Optional, Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes) with axis 'data'."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: Sequence[int], num_devices: int, min_size: int = 2 ** 14) -> P:
  """PartitionSpec splitting the largest dimension divisible by `num_devices` (small arrays stay
  replicated: their all-gather would cost more than the memory saved)."""
  dims = [i for i, size in enumerate(shape) if size % num_devices == 0]
  if int(np.prod(shape)) < min_size or num_devices == 1 or not dims:
    return P()
  split = max(dims, key=lambda i: shape[i])  # the first of the largest
  return P(*[DATA_AXIS if i == split else None for i in range(len(shape))])


def state_shardings(abstract_state: Any, mesh: Mesh, fsdp: bool) -> Any:
  """NamedShardings for every leaf of an (abstract) train state."""
  n = mesh.devices.size
  spec = lambda leaf: fsdp_spec(leaf.shape, n) if fsdp else P()
  return jax.tree.map(lambda leaf: NamedSharding(mesh, spec(leaf)), abstract_state)


def to_host(x: Optional[jax.Array]) -> Optional[np.ndarray]:
  """A global array as one numpy array on every process (all-gathered across hosts); None stays."""
  if x is None:
    return None
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
