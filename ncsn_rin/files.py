"""Writing result files atomically, on a local disk or in a gs:// bucket (TPU pods).

`write_bytes` is the one atomic write of the project: a local file is written to a temporary name
in the same directory and renamed over the target (a kill never leaves a truncated file); a GCS
object is written whole by epath (GCS objects are atomic). The helpers below encode a value to bytes
and call it.
"""

import io
import json
import os

from etils import epath
import numpy as np


path = epath.Path  # path(p): a local path or a gs:// URL as an etils Path.


def write_bytes(target, data: bytes) -> str:
  """Writes `data` to `target` atomically; returns the path as a string."""
  target = path(target)
  if str(target).startswith('gs://'):
    target.write_bytes(data)
  else:
    tmp = target.parent / f'.{target.name}.tmp{os.getpid()}'
    tmp.write_bytes(data)
    os.replace(tmp, target)
  return str(target)


def write_json(target, obj) -> str:
  return write_bytes(target, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def write_npz(target, **arrays) -> str:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return write_bytes(target, buffer.getvalue())


def read_json(source, default=None):
  source = path(source)
  return json.loads(source.read_text()) if source.exists() else default
