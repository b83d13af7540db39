"""Preemption: SIGTERM/SIGINT finish the current step, checkpoint, and exit with status 75.

Cloud TPU spot/preemptible VMs and SLURM (``--signal``, ``scancel``) send
SIGTERM some seconds before they kill a job; Ctrl-C is SIGINT. The trainer
asks :meth:`Preemption.should_stop` after every step; once it says yes it
saves a checkpoint at that step (orbax; all processes together) and raises
:class:`Preempted`, which ``jaxbn.main`` turns into exit status
:data:`EXIT_STATUS` (75, ``EX_TEMPFAIL``: "try again") without writing
``results.json``. Rerunning the same command resumes from that checkpoint.

With one process the signal handler only sets a flag. With several processes
they must stop at the *same* step although the signal may reach them at
different steps (or reach only some): then JAX's preemption sync manager
(``jax.experimental.multihost_utils.reached_preemption_sync_point``, part of
``jax.distributed``'s coordination service) agrees on the step. It listens for
SIGTERM itself, so here SIGINT is forwarded to it as a SIGTERM to this
process.

A second signal while the checkpoint is being written stops the process at
once (the default action), as users expect from a second Ctrl-C.

A signal during start-up (imports, data and weights loading, before the
trainer's handlers are in place) is recorded by :func:`catch_early`, which
``jaxbn.main`` and ``jaxbn.sweep`` call first: the run then stops before its first
step with the same exit status, so a requeue script sees one status for every
preemption. A signal after a run's last step (its final evaluation) lets that run
finish and is carried the same way, so a sweep starts no further run.

Test hook: ``JAXBN_SIGNAL_AT_STEP=STEP[:SIGNAL[:PROCESS]]`` makes process
PROCESS (default 0) send itself SIGNAL (default SIGTERM) right after global
step STEP, so tests interrupt at a chosen step without racing a sleep.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

from absl import logging

EXIT_STATUS = 75  # os.EX_TEMPFAIL: temporary failure, rerun to resume
SIGNALS = (signal.SIGTERM, signal.SIGINT)
TEST_HOOK_ENV = "JAXBN_SIGNAL_AT_STEP"


class Preempted(Exception):
  """Raised by the trainer after it saved a checkpoint because of a signal.

  ``step`` None: the signal came during start-up, before any step (nothing to save).
  """

  def __init__(self, step: int | None, workdir: str, signame: str):
    where = (f"after step {step}; checkpoint saved in {workdir}/checkpoints/{step}"
             if step is not None else "during start-up, before the first step")
    super().__init__(
        f"Stopped by {signame} {where}, no results.json. Rerun the same command to resume "
        f"(exit status {EXIT_STATUS}).")
    self.step = step


_early_signal: int | None = None


def _record_early(signum: int, frame: FrameType | None) -> None:
  del frame
  global _early_signal
  name = signal.Signals(signum).name
  if _early_signal is not None:  # second signal: stop now, as a second Ctrl-C should
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    return
  _early_signal = signum
  logging.warning("%s received during start-up: stopping before the first step (send it "
                  "again to stop at once).", name)


def catch_early() -> None:
  """Records SIGTERM/SIGINT until a :class:`Preemption` takes over (main thread only)."""
  if threading.current_thread() is threading.main_thread():
    for sig in SIGNALS:
      signal.signal(sig, _record_early)


def _test_hook() -> tuple[int, int, int] | None:
  spec = os.environ.get(TEST_HOOK_ENV)
  if not spec:
    return None
  step, *rest = spec.split(":")
  sig = getattr(signal, rest[0]) if rest and rest[0] else signal.SIGTERM
  process = int(rest[1]) if len(rest) > 1 else 0
  return int(step), int(sig), process


class Preemption:
  """Context manager: installs the signal handlers, answers ``should_stop(step)``."""

  def __init__(self, process_index: int = 0, process_count: int = 1):
    self.process_index, self.process_count = process_index, process_count
    self.signal: int | None = None
    self._previous: dict[int, object] = {}
    self._hook = _test_hook()

  @property
  def multi_process(self) -> bool:
    return self.process_count > 1

  def __enter__(self) -> "Preemption":
    global _early_signal
    if _early_signal is not None:  # caught during start-up: stop before the first step
      self.signal, _early_signal = _early_signal, None
      raise Preempted(None, "", self.signal_name)
    if threading.current_thread() is not threading.main_thread():
      logging.warning("Not in the main thread: SIGTERM/SIGINT will not checkpoint.")
      return self
    # Several processes: JAX's preemption notifier owns SIGTERM; forward SIGINT to it.
    for sig in (signal.SIGINT,) if self.multi_process else SIGNALS:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
    if self.signal is not None and not isinstance(exc, Preempted):
      # The signal came after the last step (during the final evaluation): this run's
      # results are complete, but the machine is still going away, so the next run in this
      # process (a sweep's) stops before its first step.
      global _early_signal
      _early_signal = self.signal

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.signal is not None:  # second signal: stop now
      logging.warning("Second %s: stopping without a checkpoint.", name)
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    self.signal = signum
    logging.warning("%s received: finishing this step, then checkpointing (send it again to "
                    "stop at once).", name)
    if self.multi_process and signum != signal.SIGTERM:
      os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption notifier

  @property
  def signal_name(self) -> str:
    return signal.Signals(self.signal).name if self.signal else "SIGTERM"

  def should_stop(self, step: int) -> bool:
    """After global step ``step``: must the run checkpoint and stop now? (Same on all processes.)"""
    if self._hook and self._hook[0] == step and self._hook[2] == self.process_index:
      os.kill(os.getpid(), self._hook[1])
    if not self.multi_process:
      return self.signal is not None
    from jax.experimental import multihost_utils

    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # preemption service disabled (jax_enable_preemption_service)
      return False
