"""Devices and the input pipeline: the data-parallel mesh, host batches onto it, prefetch.

The mesh is 1-D over every device of every host (`data`); the train state is replicated
and each batch is split along its leading axis. With several hosts each holds its slice of
every global batch (`Sharder.__call__`), or, for evaluation, every host holds the whole
batch and puts its slice (`put_global`). `Prefetcher` builds and transfers batches on a
thread a few steps ahead of the device.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mtbert_jax import data as data_lib
from mtbert_jax.settings import ConfigError


def make_mesh() -> Mesh:
  """A 1-D data-parallel mesh over every device of every host."""
  return Mesh(np.asarray(jax.devices()), ("data",))


class Sharder:
  """Puts host batches on the mesh (each host holds its slice of the global batch)."""

  def __init__(self, mesh: Mesh):
    self.mesh = mesh
    self.replicated = NamedSharding(mesh, P())
    self.batch = NamedSharding(mesh, P("data"))

  def check_batch_size(self, global_batch: int, flag: str) -> int:
    devices = self.mesh.devices.size
    if global_batch % devices:
      raise ConfigError(f"--config.{flag}={global_batch} is not divisible by the "
                                   f"{devices} devices")
    if global_batch % jax.process_count():
      raise ConfigError(f"--config.{flag}={global_batch} is not divisible by the "
                                   f"{jax.process_count()} hosts")
    return global_batch // jax.process_count()

  def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This host's rows of a global batch -> global arrays sharded over the mesh."""
    return {k: jax.make_array_from_process_local_data(self.batch, v) for k, v in batch.items()}

  def put_global(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """A global batch that every host holds in full (evaluation): each puts its slice."""
    count, index = jax.process_count(), jax.process_index()
    local = {k: np.split(v, count)[index] for k, v in batch.items()}
    return self(local)

  def gather(self, x: jax.Array) -> np.ndarray:
    """A (possibly multi-host) global array as one NumPy array on every host."""
    if x.is_fully_addressable:
      return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  def replicate(self, tree):
    """`tree` (the same values on every host) as arrays replicated over the mesh. With
    several processes the mesh has devices this process cannot address, so each process
    puts its copy on its own devices (`make_array_from_process_local_data`)."""
    if jax.process_count() == 1:
      return jax.device_put(tree, self.replicated)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x)),
        tree)

  def dropout_key(self, seed: int, impl: str = "threefry2x32") -> jax.Array:
    """The run's base dropout key (each step folds in its step number), replicated."""
    key = jax.random.key(seed, impl=impl)
    if jax.process_count() == 1:
      return self.replicate(key)
    return jax.random.wrap_key_data(self.replicate(jax.random.key_data(key)), impl=impl)


class Prefetcher:
  """Builds the batches on a thread, a few steps ahead of the device: at step `s` the next
  batch of task `task_at(s)`, put on the mesh by `sharder`.

  Each item carries the iterator states *after* its batch, so a checkpoint taken after
  consuming step s records exactly the data position of step s + 1.
  """

  def __init__(self, iterators: dict[str, data_lib.TrainIterator],
               task_at: Callable[[int], str], start_step: int, end_step: int,
               sharder: Callable, depth: int = 3):
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(
        target=self._run, args=(iterators, task_at, start_step, end_step, sharder),
        daemon=True)
    self._thread.start()

  def _run(self, iterators, task_at, start_step, end_step, sharder):
    try:
      for step in range(start_step, end_step):
        task = task_at(step)
        batch = next(iterators[task])
        batch.pop("index", None)
        states = {t: it.get_state() for t, it in iterators.items()}
        if not self._put((task, sharder(batch), states)):
          return
    except BaseException as e:  # surfaced in the main thread
      self._put(e)

  def _put(self, item) -> bool:
    """Waits for room in the queue; False once `close` was called."""
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def __iter__(self):
    return self

  def __next__(self):
    item = self._queue.get()
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self):
    """Stops the thread and waits for it: a thread still inside JAX's C++ code (a transfer)
    when the interpreter shuts down aborts the process ("FATAL: exception not rethrown")."""
    self._stop.set()
    self._thread.join()
