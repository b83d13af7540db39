r"""jaxbn's command line: ``python -m jaxbn.main --config=configs/bn_only.py --workdir=DIR``.

Overrides: ``--config.finetune.lr=3e-4`` for any field, or
``--config=configs/bn_only.py:model.arch=resnet50,data.name=retinamnist``.
On several hosts (TPU pod slice, SLURM) every process runs the same command;
``jax.distributed.initialize()`` is called when a multi-process environment is
detected (or ``--coordinator``/``--num_processes``/``--process_id`` are given);
``--distributed`` forces it (Cloud TPU VMs, which JAX detects through the metadata
server, not the environment), ``--nodistributed`` turns it off.

Every config mistake is one ``error:`` line and exit status 2, before any model,
data or workdir is touched (:mod:`jaxbn.validate`); a workdir holds one
experiment (:mod:`jaxbn.workdir`, ``--allow_config_change`` to resume anyway);
SIGTERM/SIGINT checkpoint and exit with status 75 (:mod:`jaxbn.preemption`),
and rerunning the command resumes.
"""

from __future__ import annotations

from jaxbn import extras

if __name__ == "__main__":
  extras.require("train", "python -m jaxbn.main")
  from jaxbn import preemption as _preemption

  _preemption.catch_early()  # a SIGTERM during the imports below still exits with status 75

import importlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxbn import cli, compile_cache

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.json.")
flags.DEFINE_string("coordinator", None, "host:port of process 0 for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
flags.DEFINE_bool(
    "distributed", None,
    "Call jax.distributed.initialize() (settings not given by the flags above are "
    "auto-detected: Cloud TPU VM, SLURM step, ...). Default: when --coordinator/"
    "--num_processes is given or the environment is multi-process (TPU_WORKER_HOSTNAMES, "
    "TPU_PROCESS_ADDRESSES, JAX_COORDINATOR_ADDRESS, SLURM_NTASKS > 1).")
flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume a workdir whose recorded config differs in experiment fields (the run then "
    "mixes two configs; the workdir records the new one).")
flags.mark_flags_as_required(["config", "workdir"])


def _multi_process_env() -> bool:
  return any(
      os.environ.get(v)
      for v in ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "JAX_COORDINATOR_ADDRESS")
  ) or int(os.environ.get("SLURM_NTASKS", "1")) > 1


# config.task -> (module, function(config, workdir)).
TASKS = {
    "train": ("jaxbn.train", "train_and_evaluate"),
    "transferability": ("jaxbn.analysis.transferability", "run"),
    "truncated_search": ("jaxbn.truncated", "search"),  # TruncatedTL cut search
}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.quiet_library_logs()
  from jaxbn import preemption, validate, workdir as workdir_lib

  try:
    validate.check(FLAGS.config, tasks=TASKS)
  except validate.ConfigError as e:
    validate.fail(str(e))
  import jax

  distributed = FLAGS.distributed
  if distributed is None:
    distributed = bool(FLAGS.coordinator or FLAGS.num_processes) or _multi_process_env()
  if distributed:
    try:
      jax.distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    except ValueError as e:  # nothing detected, e.g. SLURM_NTASKS > 1 outside srun
      sys.exit(f"error: jax.distributed.initialize() failed: {str(e).rstrip('.')}. "
               "Give --coordinator=HOST:PORT "
               "--num_processes=N --process_id=I, run every process inside a TPU VM or a "
               "SLURM step (srun), or pass --nodistributed for a single process.")
  try:  # before TensorFlow is imported: its start-up lines would precede the error line
    validate.check_devices(FLAGS.config, jax.device_count(), jax.process_count())
    workdir_lib.check_and_record(FLAGS.config, FLAGS.workdir,
                                 allow_change=FLAGS.allow_config_change)
  except (validate.ConfigError, workdir_lib.WorkdirMismatch) as e:
    validate.fail(str(e))
  if cache := compile_cache.setup_from_flags():
    logging.info("Persistent compilation cache: %s", cache)
  logging.info("JAX process %d/%d, %d local / %d global devices (%s).", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  # Keep TensorFlow (input pipeline only) off the accelerators.
  from jaxbn.tf_setup import hide_gpus_from_tf

  hide_gpus_from_tf()

  from jaxbn import train

  task = FLAGS.config.get("task", "train")
  if task not in TASKS:
    sys.exit(f"error: unknown config.task {task!r}; known: {', '.join(sorted(TASKS))}.")
  module_name, function = TASKS[task]
  run = getattr(importlib.import_module(module_name), function)
  try:
    run(FLAGS.config, FLAGS.workdir)
  except preemption.Preempted as e:
    logging.warning("%s", e)
    sys.exit(preemption.EXIT_STATUS)
  except (ValueError, train.TrainingError, FileNotFoundError) as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  from jaxbn import validate as _validate

  app.run(main, flags_parser=_validate.parse_flags)
