"""The training loop: stages of masked fine-tuning, evaluation, checkpoints, results.

``train_and_evaluate(config, workdir)`` runs the stages of ``config`` (see
:mod:`jaxbn.config`) on all devices, evaluates on the validation split after
every epoch (or ``eval_every_steps``), keeps the best-by-validation-AUC
variables, resumes automatically from ``workdir`` after a crash, and finally
writes ``workdir/results.json`` with the test metrics of the best checkpoint.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions

from jaxbn import budget, ema as ema_lib, masks, metrics as metrics_lib, preemption
from jaxbn import step as step_lib, tta as tta_lib
from jaxbn.checkpoint import RunCheckpoints, is_url, write_json
from jaxbn.data import pipeline
from jaxbn.models import acnorm, count_params, create_model, get_spec, init_variables
from jaxbn.models.registry import DTYPES
from jaxbn.parallel import DataParallel
from jaxbn.weights import convert, init as init_lib


class TrainingError(RuntimeError):
  """A run that cannot go on (NaN loss, bad config); the message says why."""


# --------------------------------------------------------------------------- #
# Set-up: model, initial variables, optimizer.
# --------------------------------------------------------------------------- #

def build_model(config: ml_collections.ConfigDict, num_outputs: int,
                bn_axis_name: str | None = None):
  """The configured model; ``bn_axis_name``: the pmap axis of cross-replica BN statistics."""
  if config.model.dtype not in DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {config.model.dtype!r}.")
  extra = {"bn_momentum": config.bn_momentum} if config.bn_momentum else {}
  if not extra and acnorm.is_acnorm(config.model.norm):  # AC-Norm's own default (0.81)
    extra = {"bn_momentum": acnorm.ACNORM_MOMENTUM}
  return create_model(
      config.model.arch,
      num_classes=num_outputs,
      dtype=DTYPES[config.model.dtype],
      norm=config.model.norm,
      dropout_rate=config.model.dropout_rate,
      truncate_at=config.model.get("truncate_at"),
      **extra,
      **({"bn_axis_name": bn_axis_name} if bn_axis_name else {}),
      **({"stage_widths": tuple(config.model.stage_widths)}
         if config.model.get("stage_widths") else {}),
  )


def initial_variables(config: ml_collections.ConfigDict, model, num_outputs: int, rng) -> Any:
  """``{'params', 'batch_stats'}`` from ``config.model.init`` with a new head.

  With ``model.norm='acnorm'`` also ``acnorm_source``: from a pretrained BN
  checkpoint, the same γ, β as the target (``jaxbn.weights.convert``).
  """
  init = config.model.init
  if init_lib.handles(config):  # Transfusion: mean_var, transfer_up_to, stage_widths
    return init_lib.initial_variables(config, model, num_outputs, rng)
  if init == "random":
    return jax.tree.map(np.asarray, init_variables(model, rng))
  source = None if init == "imagenet" else init
  return convert.load_pretrained(
      config.model.arch, source, num_classes=num_outputs, norm=config.model.norm,
      truncate_at=config.model.get("truncate_at"),
  )


def build_optimizer(
    config: ml_collections.ConfigDict, stage: ml_collections.ConfigDict, num_steps: int, labels: Any
) -> optax.GradientTransformation:
  """The stage's optimizer: trainable leaves get it, frozen ones ``set_to_zero``."""
  warmup = stage.warmup_steps
  if stage.schedule == "cosine":
    lr = optax.cosine_decay_schedule(stage.lr, max(1, num_steps - warmup))
  elif stage.schedule in ("constant", "plateau"):  # plateau scales lr_scale on the host
    lr = optax.constant_schedule(stage.lr)
  else:
    raise ValueError(f"Unknown schedule {stage.schedule!r}: constant | cosine | plateau.")
  if warmup:
    lr = optax.join_schedules([optax.linear_schedule(0.0, stage.lr, warmup), lr], [warmup])
  if config.optimizer == "adam":
    tx = optax.adam(lr)
  elif config.optimizer == "adamw":
    tx = optax.adamw(lr, weight_decay=config.weight_decay)
  elif config.optimizer == "sgd":
    tx = optax.sgd(lr, momentum=0.9)
  else:
    raise ValueError(f"Unknown optimizer {config.optimizer!r}: adam | adamw | sgd.")
  if config.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return masks.make_optimizer(tx, labels)


def stage_name_of(config: ml_collections.ConfigDict, idx: int) -> str:
  return stages_of(config)[idx][0]


def stages_of(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
  stages = [(name, config[name]) for name in ("warmup", "finetune") if config[name].epochs > 0]
  if not stages:
    raise ValueError("Both stages have epochs=0: nothing to train.")
  return stages


# --------------------------------------------------------------------------- #
# Host-side loop state (JSON-serialisable, checkpointed with the train state).
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class LoopState:
  stage: int = 0
  stage_step: int = 0  # steps done in the current stage
  lr_scale: float = 1.0
  stage_best_monitor: float = math.inf  # lower is better (val_loss or -val_auc)
  stage_bad_evals: int = 0  # for early stopping
  plateau_bad_evals: int = 0
  plateau_best: float = math.inf
  best_val_auc: float = -math.inf
  best_step: int = -1
  wall_to_best: float = 0.0
  steps_to_target: int = -1
  wall_to_target: float = -1.0
  elapsed: float = 0.0  # training wall time in previous sessions of this run
  history: list = dataclasses.field(default_factory=list)

  def to_json(self) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_json(cls, d: dict) -> "LoopState":
    defaults = cls()
    return cls(**{k: (getattr(defaults, k) if v is None else v) for k, v in d.items()})


# --------------------------------------------------------------------------- #
# Evaluation.
# --------------------------------------------------------------------------- #


def evaluate(config, split, info, spec, par: DataParallel, eval_step, variables) -> dict:
  """Loss, ROC AUC and accuracy of ``variables`` on a whole split."""
  probs, labels, losses = [], [], []
  it = pipeline.eval_iterator(
      config.data, split, batch_size=config.eval_batch_size // jax.process_count(),
      image_size=config.data.image_size, mean=spec.mean, std=spec.std,
      process_index=jax.process_index(), process_count=jax.process_count(),
  )
  if config.eval_max_batches:
    it = itertools.islice(it, config.eval_max_batches)
  for batch in it:
    mask = batch.pop("mask")
    out = par.to_host(eval_step(variables, par.put_batch(batch)))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      mask, label = multihost_utils.process_allgather((mask, batch["label"]), tiled=True)
    else:
      label = batch["label"]
    keep = np.asarray(mask) > 0
    probs.append(out["probs"][keep])
    losses.append(out["loss"][keep])
    labels.append(np.asarray(label)[keep])
  if not probs:
    raise TrainingError(f"The {split} split is empty.")
  p, y = np.concatenate(probs), np.concatenate(labels)
  return {
      "loss": float(np.mean(np.concatenate(losses))),
      "auc": metrics_lib.roc_auc(p, y, info.multi_label),
      "acc": metrics_lib.accuracy(p, y, info.multi_label),
      "n": int(len(y)),
  }


# --------------------------------------------------------------------------- #
# The loop.
# --------------------------------------------------------------------------- #


def _train_batches(config, spec, stage_idx: int, skip: int) -> Iterator[dict]:
  """The stage's batches from batch ``skip`` on: the global batch ``k`` depends only on
  (seed, stage, k), and this process reads its slice of it (no replay on resume)."""
  return pipeline.train_iterator(
      config.data, batch_size=config.batch_size // jax.process_count(),
      image_size=config.data.image_size, mean=spec.mean, std=spec.std,
      seed=config.seed * 1000 + stage_idx, start_step=skip,
      process_index=jax.process_index(), process_count=jax.process_count(),
  )


def _check_config(config, par: DataParallel) -> None:
  for name in ("batch_size", "eval_batch_size"):
    if config[name] % par.num_devices:
      raise ValueError(
          f"{name}={config[name]} is not divisible by the {par.num_devices} devices: "
          f"set --config.{name} to a multiple of {par.num_devices}."
      )
  if config.bn_stats not in ("frozen", "batch"):
    raise ValueError(f"bn_stats must be 'frozen' or 'batch', got {config.bn_stats!r}.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains per ``config``, resumable from ``workdir``; returns the results dict.

  SIGTERM/SIGINT: checkpoint after the current step and raise
  ``preemption.Preempted`` (no results.json), see :mod:`jaxbn.preemption`.
  """
  with preemption.Preemption(jax.process_index(), jax.process_count()) as preempt:
    return _train_and_evaluate(config, workdir, preempt)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        preempt: preemption.Preemption) -> dict:
  par = DataParallel(config.parallel)
  _check_config(config, par)
  is_chief = jax.process_index() == 0
  if not is_url(workdir):  # gs://: orbax and the metric writer create what they need
    os.makedirs(workdir, exist_ok=True)
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)

  info = pipeline.get_dataset_info(config.data)
  spec = get_spec(config.model.arch)
  model = build_model(config, info.num_classes, bn_axis_name=par.axis_name)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  stages = stages_of(config)
  steps_per_epoch = max(1, info.num_examples["train"] // config.batch_size)
  stage_steps = [budget.stage_steps(s.epochs, steps_per_epoch, min_steps=s.get("min_steps", 0),
                                    max_stage_steps=s.get("max_steps", 0)) for _, s in stages]
  if config.max_steps:
    stage_steps = _cap(stage_steps, config.max_steps)
  eval_every = budget.eval_interval(steps_per_epoch, stage_steps[-1],
                                    eval_every_steps=config.eval_every_steps,
                                    min_evals=config.get("min_evals", 0))

  variables = initial_variables(config, model, info.num_classes, init_rng)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  # Collections read but never trained or updated (AC-Norm's acnorm_source).
  constants = {k: v for k, v in variables.items() if k not in ("params", "batch_stats")}
  labels = [
      masks.make_labels(params, s.strategy, batch_stats=batch_stats, arch=config.model.arch)
      for _, s in stages
  ]
  optimizers = [
      build_optimizer(config, s, n, lab) for (_, s), n, lab in zip(stages, stage_steps, labels)
  ]
  n_total = count_params(params)
  trainable = {name: masks.count(params, lab)[0] for (name, _), lab in zip(stages, labels)}
  logging.info("Model %s (init %s): %s parameters. Data %s: %s, %d classes%s.",
               config.model.arch, config.model.init, f"{n_total:,}", info.name,
               info.num_examples, info.num_classes, " (multi-label)" if info.multi_label else "")

  # Resume: the checkpoint's opt_state belongs to the stage that wrote it.
  ckpts = RunCheckpoints(workdir, keep=config.keep_checkpoints)
  loop, resumed = LoopState(), None
  if (last := ckpts.latest_step()) is not None:
    meta = ckpts.restore_meta(last)
    loop = LoopState.from_json(meta["loop"])
    owner = meta["state_stage"]
    abstract = jax.eval_shape(
        lambda: _new_state(params, batch_stats, optimizers[owner], 0, constants))
    restored = ckpts.restore_state(abstract, last)
    params, batch_stats = restored.params, restored.batch_stats
    constants = restored.constants
    resumed = (owner, restored)
    logging.info("Resuming from %s at step %d (stage %d).", workdir, last, loop.stage + 1)

  eval_step = par.compile_eval(step_lib.make_eval_step(model, multi_label=info.multi_label))
  tta_views = tta_lib.parse_views(config.get("tta", ""))
  tta_step = par.compile_eval(tta_lib.make_eval_step(
      model, multi_label=info.multi_label, views=tta_views, image_size=config.data.image_size,
      shift=config.get("tta_shift", 1 / 16))) if tta_views else None
  ema_decay, ema_params = float(config.get("ema_decay", 0.0)), None
  progress = periodic_actions.ReportProgress(
      num_train_steps=sum(stage_steps), writer=writer, every_steps=config.log_every_steps
  )
  start_time = time.time()
  global_step = sum(stage_steps[: loop.stage]) + loop.stage_step
  for stage_idx in range(loop.stage, len(stages)):
    name, stage = stages[stage_idx]
    tx = optimizers[stage_idx]
    logging.info("Stage %d/%d %r: strategy %s, %s trainable of %s parameters (%.2f%%), "
                 "%d steps, lr %g (%s).", stage_idx + 1, len(stages), name, stage.strategy,
                 f"{trainable[name]:,}", f"{n_total:,}", 100 * trainable[name] / n_total,
                 stage_steps[stage_idx], stage.lr, stage.schedule)
    if resumed is not None and resumed[0] == stage_idx:
      state = resumed[1]
    else:
      state = _new_state(params, batch_stats, tx, global_step, constants)
      loop = dataclasses.replace(
          loop, stage=stage_idx, stage_step=0, lr_scale=1.0, stage_best_monitor=math.inf,
          stage_bad_evals=0, plateau_best=math.inf, plateau_bad_evals=0,
      )
    resumed = None
    state = par.put_state(state)
    train_step = par.compile_train(step_lib.make_train_step(
        model, tx, labels[stage_idx], bn_stats=config.bn_stats, multi_label=info.multi_label,
        label_smoothing=config.label_smoothing, axis_name=par.axis_name,
    ))
    batches = _train_batches(config, spec, stage_idx, loop.stage_step)
    ema_update = ema_lib.make_update(masks.trainable_mask(labels[stage_idx]),
                                     ema_decay) if ema_decay else None
    if ema_update and ema_params is None:  # not checkpointed: a resumed run restarts it
      ema_params = jax.tree.map(jnp.copy, state.params)  # the step donates state's buffers
    stop = False
    while loop.stage_step < stage_steps[stage_idx] and not stop:
      state, step_metrics = train_step(state, par.put_batch(next(batches)), train_rng,
                                       loop.lr_scale)
      if ema_update:
        ema_params = ema_update(ema_params, state.params, global_step)
      loop.stage_step += 1
      global_step += 1
      progress(global_step)
      evaluate_now = global_step % eval_every == 0 or loop.stage_step == stage_steps[stage_idx]
      if global_step % config.log_every_steps == 0 or evaluate_now:
        loss = float(step_metrics["loss"])
        if not math.isfinite(loss):
          _raise_nan(global_step, ckpts, workdir)
        writer.write_scalars(global_step, {"train_loss": loss, "lr_scale": loop.lr_scale})
      if evaluate_now:
        stop = _evaluate_and_checkpoint(
            config, stage, stage_idx, loop, state, par, eval_step, info, spec, ckpts, writer,
            global_step, start_time, workdir, ema_params=ema_params,
        )
      if preempt.should_stop(global_step):
        _stop_for_preemption(preempt, ckpts, writer, par, state, loop, stage_idx, global_step,
                             start_time, workdir)
    host = par.get_state(state)
    params = jax.tree.map(np.asarray, host.params)
    batch_stats = jax.tree.map(np.asarray, host.batch_stats)

  if preempt.signal is not None and not preempt.multi_process:  # signalled after the last step
    _stop_for_preemption(preempt, ckpts, writer, par, state, loop, len(stages) - 1, global_step,
                         start_time, workdir)
  ckpts.wait()
  if ema_params is not None:  # the EMA weights are what gets evaluated and kept
    params = jax.tree.map(np.asarray, par.get_state(state.replace(params=ema_params)).params)
  results = _final_results(config, info, par, eval_step, ckpts, loop, params, batch_stats,
                           n_total, trainable, global_step, start_time, constants,
                           tta_step=tta_step)
  if is_chief:
    write_json(os.path.join(workdir, "results.json"), results)
  writer.flush()
  ckpts.close()
  return results


def _new_state(params, batch_stats, tx, step: int, constants=None) -> step_lib.TrainState:
  return step_lib.TrainState(
      step=jnp.asarray(step, jnp.int32), params=params, batch_stats=batch_stats,
      opt_state=tx.init(params), constants=dict(constants or {}),
  )


def _stop_for_preemption(preempt, ckpts, writer, par, state, loop: LoopState, stage_idx: int,
                         global_step: int, start_time: float, workdir: str) -> None:
  """Checkpoints ``global_step`` (unless an evaluation just did), then raises ``Preempted``."""
  if ckpts.latest_step() != global_step:
    meta = _checkpoint_meta(loop, stage_idx, loop.elapsed + time.time() - start_time)
    ckpts.save(global_step, par.get_state(state), meta, best=False)
  ckpts.wait()
  writer.flush()
  ckpts.close()
  raise preemption.Preempted(global_step, workdir, preempt.signal_name)


def _checkpoint_meta(loop: LoopState, stage_idx: int, wall: float,
                     stage_done: bool = False) -> dict:
  """The checkpoint's ``meta``: the loop as of now (``wall`` seconds trained) and the stage."""
  saved = dataclasses.replace(loop, elapsed=wall)
  if stage_done:
    saved.stage, saved.stage_step = saved.stage + 1, 0
  return {"loop": saved.to_json(), "state_stage": stage_idx}


def _cap(stage_steps: list[int], max_steps: int) -> list[int]:
  out, left = [], max_steps
  for n in stage_steps:
    out.append(max(0, min(n, left)))
    left -= out[-1]
  return out


def _raise_nan(step: int, ckpts: RunCheckpoints, workdir: str) -> None:
  last = ckpts.latest_step()
  where = (f"the last good checkpoint (step {last}) is kept in {workdir}/checkpoints"
           if last is not None else "no checkpoint had been written yet")
  raise TrainingError(
      f"Loss became NaN/inf at step {step}; stopped, {where}. Lower the learning rate "
      "(--config.finetune.lr) or set --config.grad_clip_norm."
  )


def record_evaluation(loop: LoopState, val: dict, stage: ml_collections.ConfigDict,
                      config: ml_collections.ConfigDict, step: int, wall: float) -> tuple[bool, bool]:
  """Updates ``loop`` after a validation pass; returns (new best val AUC, stop stage).

  Tracks the best validation AUC (and steps / wall time to it and to
  ``config.target_auc``), reduce-on-plateau on validation loss (as the
  paper's Keras callback: ×``plateau_factor`` after ``plateau_patience`` bad
  evaluations, floored at ``min_lr``) and early stopping on
  ``config.early_stopping_metric`` with the stage's patience (0 = never).
  """
  improved = val["auc"] > loop.best_val_auc
  if improved:
    loop.best_val_auc, loop.best_step, loop.wall_to_best = val["auc"], step, wall
  if loop.steps_to_target < 0 and val["auc"] >= config.target_auc:
    loop.steps_to_target, loop.wall_to_target = step, wall
  if stage.schedule == "plateau":
    if val["loss"] < loop.plateau_best:
      loop.plateau_best, loop.plateau_bad_evals = val["loss"], 0
    else:
      loop.plateau_bad_evals += 1
      if loop.plateau_bad_evals >= config.plateau_patience:
        loop.lr_scale = max(loop.lr_scale * config.plateau_factor, config.min_lr / stage.lr)
        loop.plateau_bad_evals = 0
  monitor = val["loss"] if config.early_stopping_metric == "val_loss" else -val["auc"]
  if monitor < loop.stage_best_monitor:
    loop.stage_best_monitor, loop.stage_bad_evals = monitor, 0
  else:
    loop.stage_bad_evals += 1
  patience = stage.early_stopping_patience
  return improved, bool(patience) and loop.stage_bad_evals >= patience


def _evaluate_and_checkpoint(config, stage, stage_idx: int, loop: LoopState, state, par,
                             eval_step, info, spec, ckpts, writer, global_step, start_time,
                             workdir, ema_params=None) -> bool:
  """Validation, best/plateau/early-stopping bookkeeping and checkpointing.

  With ``ema_params`` (jaxbn.ema) those are evaluated and kept as the best
  variables; the resumable checkpoint keeps the raw training state.
  Returns True when the stage should stop early.
  """
  stage_name = stage_name_of(config, stage_idx)
  eval_state = state if ema_params is None else state.replace(params=ema_params)
  val = evaluate(config, "val", info, spec, par, eval_step, eval_state.variables)
  if not math.isfinite(val["loss"]):
    _raise_nan(global_step, ckpts, workdir)
  wall = loop.elapsed + time.time() - start_time
  writer.write_scalars(global_step, {"val_loss": val["loss"], "val_auc": val["auc"],
                                     "val_acc": val["acc"]})
  loop.history.append({"step": global_step, "wall": round(wall, 3), "stage": stage_name,
                       "val_loss": val["loss"], "val_auc": val["auc"], "val_acc": val["acc"]})
  logging.info("step %d [%s] val loss %.4f auc %.4f acc %.4f (%.1fs)", global_step, stage_name,
               val["loss"], val["auc"], val["acc"], wall)
  improved, stop = record_evaluation(loop, val, stage, config, global_step, wall)
  if stop:
    logging.info("Early stopping stage %r at step %d.", stage_name, global_step)
  if len(loop.history) % config.checkpoint_every_evals == 0 or improved or stop:
    # A stage that stopped early is done: resume must not re-run it.
    meta = _checkpoint_meta(loop, stage_idx, wall, stage_done=stop)
    ckpts.save(global_step, par.get_state(state), meta, best=improved,
               best_variables=None if ema_params is None else par.get_state(eval_state).variables)
  return stop


def _final_results(config, info, par, eval_step, ckpts, loop, params, batch_stats, n_total,
                   trainable_counts, global_step, start_time, constants=None,
                   tta_step=None) -> dict:
  last = {**(constants or {}), "params": params, "batch_stats": batch_stats}
  best = ckpts.restore_best(last)
  variables = best[0] if best else last
  spec = get_spec(config.model.arch)
  device_variables = par.put_state(variables)
  eval_test = config.get("eval_test", True)
  test = (evaluate(config, "test", info, spec, par, eval_step, device_variables) if eval_test
          else {"auc": None, "acc": None, "loss": None})
  tta = tta_results(config, info, spec, par, tta_step, device_variables, eval_test)
  wall = loop.elapsed + time.time() - start_time
  last_stage = list(trainable_counts)[-1] if trainable_counts else None
  results = {
      "arch": config.model.arch,
      "init": config.model.init,
      "norm": config.model.norm,
      "model": config.model.to_dict(),  # every model field: truncate_at, transfer_up_to, ...
      "image_size": config.data.image_size,
      "dataset": info.name,
      "num_classes": info.num_classes,
      "class_names": list(info.class_names),  # read by jaxbn.predict --workdir
      "multi_label": info.multi_label,
      "strategy": {name: config[name].strategy for name, _ in stages_of(config)},
      "bn_stats": config.bn_stats,
      "test_auc": test["auc"],
      "test_acc": test["acc"],
      "test_loss": test["loss"],
      "best_val_auc": loop.best_val_auc,
      "best_step": loop.best_step,
      "steps_to_best": loop.best_step,
      "wall_to_best_s": round(loop.wall_to_best, 2),
      "target_auc": config.target_auc,
      "steps_to_target": loop.steps_to_target,
      "wall_to_target_s": round(loop.wall_to_target, 2),
      "total_steps": global_step,
      "wall_time_s": round(wall, 2),
      "trainable_params": trainable_counts.get(last_stage, 0),
      "trainable_params_per_stage": trainable_counts,
      "total_params": n_total,
      "devices": par.num_devices,
      "parallel": par.mode,
      "history": loop.history,
      "test_skipped": not eval_test,
      "ema_decay": config.get("ema_decay", 0.0),
      **tta,
      "config": config.to_dict(),
  }
  if eval_test:
    logging.info("Test (best val AUC step %d): AUC %.4f ACC %.4f.", loop.best_step, test["auc"],
                 test["acc"])
  return results


def tta_results(config, info, spec, par, tta_step, variables, eval_test: bool = True) -> dict:
  """``tta_*`` fields of results.json: validation (and test) AUC/ACC of ``variables`` with
  test-time augmentation (jaxbn.tta), reported beside the plain scores; {} when off."""
  if tta_step is None:
    return {}
  out = {"tta": list(tta_lib.parse_views(config.tta))}
  for split in ("val", "test") if eval_test else ("val",):
    m = evaluate(config, split, info, spec, par, tta_step, variables)
    out.update({f"tta_{split}_auc": m["auc"], f"tta_{split}_acc": m["acc"]})
  logging.info("TTA (%s): %s", config.tta,
               {k: round(v, 4) for k, v in out.items() if isinstance(v, float)})
  return out
