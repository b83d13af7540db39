"""The training loop: stages of masked fine-tuning, evaluation, checkpoints, results.

``train_and_evaluate(config, workdir)`` runs the stages of ``config`` (see
:mod:`jaxbn.config`) on all devices, evaluates on the validation split after
every epoch (or ``eval_every_steps``), keeps the best-by-validation-AUC
variables, resumes automatically from ``workdir`` after a crash, and finally
writes ``workdir/results.json`` with the test metrics of the best checkpoint.

Data flows one way: :func:`_setup` turns the config into a :class:`Run` (what
every part reads; built with :mod:`jaxbn.setup`) and the initial variables;
:func:`_resume` reads the workdir's checkpoint into a :class:`LoopState` (the
host-side counters, changed in place) and a train state; :func:`_run_stage`
trains one stage; :func:`_finish` evaluates the best checkpoint on the test split.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxbn.tf_setup import import_tensorflow

import_tensorflow()  # quietly, before clu's metric writers import it
from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top

from jaxbn import budget, ema as ema_lib, masks, metrics as metrics_lib, preemption, setup
from jaxbn import step as step_lib, target_stats, tta as tta_lib
from jaxbn.checkpoint import RunCheckpoints, is_url, write_json
from jaxbn.data import pipeline
from jaxbn.models import count_params, get_spec
from jaxbn.parallel import DataParallel
from jaxbn.step import TrainState


class TrainingError(RuntimeError):
  """A run that cannot go on (NaN loss, bad config); the message says why."""


# --------------------------------------------------------------------------- #
# Host-side loop state (JSON-serialisable, checkpointed with the train state).
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class LoopState:
  stage: int = 0
  stage_step: int = 0  # steps done in the current stage
  step: int = 0  # steps done in all stages (the global step)
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

  def start_stage(self, stage: int) -> None:
    """Enters ``stage`` from its first step: the per-stage counters start again."""
    self.stage, self.stage_step, self.lr_scale = stage, 0, 1.0
    self.stage_best_monitor, self.stage_bad_evals = math.inf, 0
    self.plateau_best, self.plateau_bad_evals = math.inf, 0


# --------------------------------------------------------------------------- #
# What one run reads.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything the parts of one training run read, built once by :func:`_setup`."""

  config: ml_collections.ConfigDict
  workdir: str
  info: pipeline.DatasetInfo
  model: Any
  par: DataParallel
  stages: list  # [(name, stage config)] (jaxbn.setup.stages_of)
  stage_steps: list[int]
  labels: list  # per stage: the mask labels of params
  optimizers: list  # per stage
  class_weights: Any  # [num_classes] loss weights (config.class_weights), or None
  eval_every: int
  eval_step: Callable
  tta_step: Callable | None
  ckpts: RunCheckpoints
  writer: Any  # clu MetricWriter
  progress: periodic_actions.ReportProgress
  preempt: preemption.Preemption
  trainable: dict[str, int]  # stage name -> trainable parameters
  total_params: int
  train_rng: jax.Array
  start_time: float

  @property
  def spec(self):
    return get_spec(self.config.model.arch)

  def wall(self, loop: "LoopState") -> float:
    """Training wall time so far: earlier sessions of this run plus this one."""
    return loop.elapsed + time.time() - self.start_time


# --------------------------------------------------------------------------- #
# Evaluation.
# --------------------------------------------------------------------------- #


def evaluate(run: Run, split: str, variables, step_fn: Callable | None = None) -> dict:
  """Loss, ROC AUC and accuracy of ``variables`` on a whole split (``step_fn``: TTA)."""
  config, step_fn = run.config, step_fn or run.eval_step
  probs, labels, losses = [], [], []
  it = pipeline.eval_iterator(
      config.data, split, batch_size=config.eval_batch_size // jax.process_count(),
      image_size=config.data.image_size, mean=run.spec.mean, std=run.spec.std,
      process_index=jax.process_index(), process_count=jax.process_count(),
  )
  if config.eval_max_batches:
    it = itertools.islice(it, config.eval_max_batches)
  for batch in it:
    mask = batch.pop("mask")
    out = run.par.to_host(step_fn(variables, run.par.put_batch(batch)))
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
  multi_label = run.info.multi_label
  return {
      "loss": float(np.mean(np.concatenate(losses))),
      "auc": metrics_lib.roc_auc(p, y, multi_label),
      "acc": metrics_lib.accuracy(p, y, multi_label),
      "n": int(len(y)),
  }


# --------------------------------------------------------------------------- #
# The run: set-up, resume, stages, finish.
# --------------------------------------------------------------------------- #


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains per ``config``, resumable from ``workdir``; returns the results dict.

  SIGTERM/SIGINT: checkpoint after the current step and raise
  ``preemption.Preempted`` (no results.json), see :mod:`jaxbn.preemption`.
  """
  with preemption.Preemption(jax.process_index(), jax.process_count()) as preempt:
    run, variables = _setup(config, workdir, preempt)
    loop, variables, resumed = _resume(run, variables)
    if resumed is None and config.get("bn_target_batches", 0):  # a resumed run has them
      variables = _target_statistics(run, variables)
    state, ema = None, None
    for stage_idx in range(loop.stage, len(run.stages)):
      if resumed is not None and resumed.stage == stage_idx:
        state = resumed.state
      else:
        loop.start_stage(stage_idx)
        state = TrainState.create(variables, run.optimizers[stage_idx], loop.step)
      resumed = None
      state, ema = _run_stage(run, loop, stage_idx, run.par.put_state(state), ema)
      variables = _to_host(run.par.get_state(state).variables)
    if preempt.signal is not None and not preempt.multi_process:  # after the last step
      _stop_for_preemption(run, loop, state, len(run.stages) - 1)
    if ema is not None:  # the EMA weights are what gets evaluated and kept
      variables = {**variables, "params": _to_host(run.par.get_state(ema))}
    return _finish(run, loop, variables)


@dataclasses.dataclass(frozen=True)
class _Resumed:
  stage: int  # the stage whose optimizer state the checkpoint holds
  state: TrainState


def _setup(config, workdir: str, preempt) -> tuple[Run, dict]:
  """The :class:`Run` of ``config`` in ``workdir`` and the model's initial variables."""
  par = DataParallel(config.parallel)
  _check_config(config, par)
  if not is_url(workdir):  # gs://: orbax and the metric writer create what they need
    os.makedirs(workdir, exist_ok=True)
  info = pipeline.get_dataset_info(config.data)
  model = setup.build_model(config, info.num_classes, bn_axis_name=par.axis_name)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  stages = setup.stages_of(config)
  stage_steps, eval_every = _schedule(config, info, stages)
  variables = setup.initial_variables(config, model, init_rng)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  labels = [masks.make_labels(params, s.strategy, batch_stats=batch_stats,
                              arch=config.model.arch) for _, s in stages]
  eval_step, tta_step = _eval_steps(config, model, info, par)
  writer = _metric_writer(workdir)
  run = Run(
      config=config, workdir=workdir, info=info, model=model, par=par, stages=stages,
      stage_steps=stage_steps, labels=labels, class_weights=_class_weights(config, info),
      optimizers=[setup.build_optimizer(config, s, n, lab)
                  for (_, s), n, lab in zip(stages, stage_steps, labels)],
      eval_every=eval_every, eval_step=eval_step, tta_step=tta_step,
      ckpts=RunCheckpoints(workdir, keep=config.keep_checkpoints,
                           soup=config.get("soup_size", 0)), writer=writer,
      progress=periodic_actions.ReportProgress(
          num_train_steps=sum(stage_steps), writer=writer, every_steps=config.log_every_steps),
      preempt=preempt,
      trainable={name: masks.count(params, lab)[0] for (name, _), lab in zip(stages, labels)},
      total_params=count_params(params), train_rng=train_rng, start_time=time.time(),
  )
  logging.info("Model %s (init %s): %s parameters. Data %s: %s, %d classes%s.",
               config.model.arch, config.model.init, f"{run.total_params:,}", info.name,
               info.num_examples, info.num_classes, " (multi-label)" if info.multi_label else "")
  return run, variables


def _class_weights(config, info: pipeline.DatasetInfo):
  """``config.class_weights`` as a weight per class from the training labels, or None."""
  if config.get("class_weights", "none") == "none":
    return None
  if info.multi_label:
    logging.warning("class_weights=%s: %s is multi-label, so it trains unweighted.",
                 config.class_weights, info.name)
    return None
  weights = step_lib.balanced_class_weights(pipeline.train_labels(config.data), info.num_classes)
  logging.info("Class weights (%s): %s.", config.class_weights,
               ", ".join(f"{n} {w:.3g}" for n, w in zip(info.class_names, weights)))
  return weights


def _metric_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard scalars from process 0, nothing from the others.

  Not ``clu``'s default writer: its ``LoggingWriter`` would repeat on the console
  every validation line the trainer logs itself.
  """
  if jax.process_index() != 0:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncWriter(metric_writers.SummaryWriter(workdir))


def _check_config(config, par: DataParallel) -> None:
  for name in ("batch_size", "eval_batch_size"):
    if config[name] % par.num_devices:
      raise ValueError(
          f"{name}={config[name]} is not divisible by the {par.num_devices} devices: "
          f"set --config.{name} to a multiple of {par.num_devices}."
      )
  if config.bn_stats not in ("frozen", "batch"):
    raise ValueError(f"bn_stats must be 'frozen' or 'batch', got {config.bn_stats!r}.")


def _schedule(config, info, stages) -> tuple[list[int], int]:
  """Steps per stage (``jaxbn.budget``, capped by ``max_steps``) and the evaluation interval."""
  steps_per_epoch = max(1, info.num_examples["train"] // config.batch_size)
  stage_steps = [budget.stage_steps(s.epochs, steps_per_epoch, min_steps=s.get("min_steps", 0),
                                    max_stage_steps=s.get("max_steps", 0)) for _, s in stages]
  if config.max_steps:
    stage_steps = _cap(stage_steps, config.max_steps)
  eval_every = budget.eval_interval(steps_per_epoch, stage_steps[-1],
                                    eval_every_steps=config.eval_every_steps,
                                    min_evals=config.get("min_evals", 0))
  return stage_steps, eval_every


def _cap(stage_steps: list[int], max_steps: int) -> list[int]:
  out, left = [], max_steps
  for n in stage_steps:
    out.append(max(0, min(n, left)))
    left -= out[-1]
  return out


def _eval_steps(config, model, info, par: DataParallel) -> tuple[Callable, Callable | None]:
  """The compiled evaluation step, and the test-time-augmentation one (None when off)."""
  eval_step = par.compile_eval(step_lib.make_eval_step(model, multi_label=info.multi_label))
  views = tta_lib.parse_views(config.get("tta", ""))
  if not views:
    return eval_step, None
  return eval_step, par.compile_eval(tta_lib.make_eval_step(
      model, multi_label=info.multi_label, views=views, image_size=config.data.image_size,
      shift=config.get("tta_shift", 1 / 16)))


def _resume(run: Run, variables: dict) -> tuple[LoopState, dict, _Resumed | None]:
  """The loop, variables and train state of the workdir's last checkpoint (if any).

  The checkpoint's optimizer state belongs to the stage that wrote it.
  """
  last = run.ckpts.latest_step()
  if last is None:
    return LoopState(), variables, None
  meta = run.ckpts.restore_meta(last)
  loop = LoopState.from_json(meta["loop"])
  loop.step = last  # the checkpoint's step is the global step (older checkpoints lack the field)
  owner = meta["state_stage"]
  abstract = jax.eval_shape(lambda: TrainState.create(variables, run.optimizers[owner], 0))
  state = run.ckpts.restore_state(abstract, last)
  logging.info("Resuming from %s at step %d (stage %d).", run.workdir, last, loop.stage + 1)
  return loop, _to_host(state.variables), _Resumed(owner, state)


_TARGET_STATS_STREAM = 999  # _train_batches' stage index for AdaBN's batches (no stage's)


def _target_statistics(run: Run, variables: dict) -> dict:
  """AdaBN: every BN layer's running statistics from ``config.bn_target_batches`` augmented
  training batches (:mod:`jaxbn.target_stats`), from a seed stream no stage reads."""
  config, started = run.config, time.perf_counter()
  # Outside pmap: a model whose BN has no cross-replica axis.
  model = run.model if run.par.axis_name is None else setup.build_model(
      config, run.info.num_classes)
  reduce = None
  if jax.process_count() > 1:  # each process summed its rows' statistics: add the sums, counts
    from jax.experimental import multihost_utils

    reduce = lambda tree: jax.tree.map(  # noqa: E731
        lambda x: np.sum(x, axis=0), multihost_utils.process_allgather(tree))
  out = target_stats.estimate(
      model, variables, _train_batches(config, run.spec, _TARGET_STATS_STREAM, 0),
      config.bn_target_batches, reduce=reduce)
  logging.info("BN statistics re-estimated on %d training batches (AdaBN) in %.1f s.",
               config.bn_target_batches, time.perf_counter() - started)
  return out


def _to_host(tree: Any) -> Any:
  return jax.tree.map(np.asarray, tree)


def _train_batches(config, spec, stage_idx: int, skip: int) -> Iterator[dict]:
  """The stage's batches from batch ``skip`` on: the global batch ``k`` depends only on
  (seed, stage, k), and this process reads its slice of it (no replay on resume)."""
  return pipeline.train_iterator(
      config.data, batch_size=config.batch_size // jax.process_count(),
      image_size=config.data.image_size, mean=spec.mean, std=spec.std,
      seed=config.seed * 1000 + stage_idx, start_step=skip,
      process_index=jax.process_index(), process_count=jax.process_count(),
  )


def _run_stage(run: Run, loop: LoopState, stage_idx: int, state: TrainState, ema):
  """Trains stage ``stage_idx`` from ``loop.stage_step`` to its end (or early stop).

  ``ema``: the EMA of the trainable parameters (jaxbn.ema; None when off or not
  started). Returns the new ``(state, ema)``; ``loop`` is updated in place.
  """
  config, (name, stage), num_steps = run.config, run.stages[stage_idx], run.stage_steps[stage_idx]
  logging.info("Stage %d/%d %r: strategy %s, %s trainable of %s parameters (%.2f%%), "
               "%d steps, lr %g (%s).", stage_idx + 1, len(run.stages), name, stage.strategy,
               f"{run.trainable[name]:,}", f"{run.total_params:,}",
               100 * run.trainable[name] / run.total_params, num_steps, stage.lr, stage.schedule)
  train_step = run.par.compile_train(step_lib.make_train_step(
      run.model, run.optimizers[stage_idx], run.labels[stage_idx], bn_stats=config.bn_stats,
      multi_label=run.info.multi_label, label_smoothing=config.label_smoothing,
      ordinal_scale=config.get("ordinal_scale", 0.0),
      auc_loss_weight=config.get("auc_loss_weight", 0.0),
      auc_loss_margin=config.get("auc_loss_margin", 1.0),
      mixup_alpha=config.mixup_alpha, class_weights=run.class_weights,
      axis_name=run.par.axis_name,
  ))
  batches = _train_batches(config, run.spec, stage_idx, loop.stage_step)
  decay = float(config.get("ema_decay", 0.0))
  ema_update = ema_lib.make_update(masks.trainable_mask(run.labels[stage_idx]),
                                   decay) if decay else None
  if ema_update and ema is None:  # not checkpointed: a resumed run restarts it
    ema = jax.tree.map(jnp.copy, state.params)  # the step donates state's buffers
  stop, started = False, time.perf_counter()  # started: None once the first step is logged
  while loop.stage_step < num_steps and not stop:
    state, step_metrics = train_step(state, run.par.put_batch(next(batches)), run.train_rng,
                                     loop.lr_scale)
    if started is not None:  # where start-up time goes: this one includes tracing and compiling
      jax.block_until_ready(step_metrics["loss"])
      logging.info("Stage %r: first train step done in %.1f s (the first batch, tracing and "
                   "compilation included).", name, time.perf_counter() - started)
      started = None
    if ema_update:
      ema = ema_update(ema, state.params, loop.step)
    loop.stage_step += 1
    loop.step += 1
    run.progress(loop.step)
    evaluate_now = loop.step % run.eval_every == 0 or loop.stage_step == num_steps
    if loop.step % config.log_every_steps == 0 or evaluate_now:
      loss = float(step_metrics["loss"])
      if not math.isfinite(loss):
        _raise_nan(run, loop.step)
      run.writer.write_scalars(loop.step, {"train_loss": loss, "lr_scale": loop.lr_scale})
    if evaluate_now:
      stop = _evaluate_and_checkpoint(run, loop, stage_idx, state, ema, train_loss=loss)
    if run.preempt.should_stop(loop.step):
      _stop_for_preemption(run, loop, state, stage_idx)
  return state, ema


def _evaluate_and_checkpoint(run: Run, loop: LoopState, stage_idx: int, state: TrainState,
                             ema, train_loss: float) -> bool:
  """Validation, best/plateau/early-stopping bookkeeping and checkpointing.

  With ``ema`` (jaxbn.ema; None when off) those parameters are evaluated and kept as the
  best variables; the resumable checkpoint keeps the raw training state. ``train_loss``
  (the last step's) goes on the validation line. Returns True when the stage should stop early.
  """
  name, stage = run.stages[stage_idx]
  eval_state = state if ema is None else state.replace(params=ema)
  val = evaluate(run, "val", eval_state.variables)
  if not math.isfinite(val["loss"]):
    _raise_nan(run, loop.step)
  wall = run.wall(loop)
  run.writer.write_scalars(loop.step, {"val_loss": val["loss"], "val_auc": val["auc"],
                                       "val_acc": val["acc"]})
  loop.history.append({"step": loop.step, "wall": round(wall, 3), "stage": name,
                       "val_loss": val["loss"], "val_auc": val["auc"], "val_acc": val["acc"]})
  logging.info("step %d [%s] train loss %.4f, val loss %.4f auc %.4f acc %.4f (%.1fs)",
               loop.step, name, train_loss, val["loss"], val["auc"], val["acc"], wall)
  improved, stop = record_evaluation(loop, val, stage, run.config, loop.step, wall)
  if stop and loop.stage_step < run.stage_steps[stage_idx]:  # not the stage's planned end
    logging.info("Early stopping stage %r at step %d.", name, loop.step)
  if len(loop.history) % run.config.checkpoint_every_evals == 0 or improved or stop:
    # A stage that stopped early is done: resume must not re-run it.
    run.ckpts.save(loop.step, run.par.get_state(state),
                   _checkpoint_meta(loop, stage_idx, wall, stage_done=stop), best=improved,
                   best_variables=None if ema is None else run.par.get_state(eval_state).variables)
  if run.ckpts.soup is not None:
    run.ckpts.save_soup_member(loop.step, run.par.get_state(eval_state).variables, val["auc"])
  return stop


def _checkpoint_meta(loop: LoopState, stage_idx: int, wall: float,
                     stage_done: bool = False) -> dict:
  """The checkpoint's ``meta``: the loop as of now (``wall`` seconds trained) and the stage."""
  saved = {**loop.to_json(), "elapsed": wall}
  if stage_done:
    saved.update(stage=loop.stage + 1, stage_step=0)
  return {"loop": saved, "state_stage": stage_idx}


def _stop_for_preemption(run: Run, loop: LoopState, state: TrainState, stage_idx: int) -> None:
  """Checkpoints the current step (unless an evaluation just did), then raises ``Preempted``."""
  if run.ckpts.latest_step() != loop.step:
    run.ckpts.save(loop.step, run.par.get_state(state),
                   _checkpoint_meta(loop, stage_idx, run.wall(loop)), best=False)
  run.ckpts.wait()
  run.writer.flush()
  run.ckpts.close()
  raise preemption.Preempted(loop.step, run.workdir, run.preempt.signal_name)


def _raise_nan(run: Run, step: int) -> None:
  last = run.ckpts.latest_step()
  where = (f"the last good checkpoint (step {last}) is kept in {run.workdir}/checkpoints"
           if last is not None else "no checkpoint had been written yet")
  raise TrainingError(
      f"Loss became NaN/inf at step {step}; stopped, {where}. Lower the learning rate "
      "(--config.finetune.lr) or set --config.grad_clip_norm."
  )


def record_evaluation(loop: LoopState, val: dict, stage: ml_collections.ConfigDict,
                      config: ml_collections.ConfigDict, step: int,
                      wall: float) -> tuple[bool, bool]:
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


# --------------------------------------------------------------------------- #
# Results.
# --------------------------------------------------------------------------- #


def _finish(run: Run, loop: LoopState, variables: dict) -> dict:
  """Test metrics of the final model, written to results.json.

  The final model is the best checkpoint (``variables`` if none), or with ``soup_size`` the
  average of the soup's members (:mod:`jaxbn.soup`).
  """
  run.ckpts.wait()
  final, soup_steps = run.ckpts.restore_final(variables) or (variables, [])
  device_variables = run.par.put_state(final)
  soup = _soup_results(run, device_variables, soup_steps) if soup_steps else {}
  eval_test = run.config.get("eval_test", True)
  test = (evaluate(run, "test", device_variables) if eval_test
          else {"auc": None, "acc": None, "loss": None})
  results = {**_results(run, loop, test, tta_results(run, device_variables, eval_test)), **soup}
  if eval_test:
    logging.info("Test (%s): AUC %.4f ACC %.4f.", f"soup of steps {soup['soup_steps']}" if soup
                 else f"best val AUC step {loop.best_step}", test["auc"], test["acc"])
  if jax.process_index() == 0:
    write_json(os.path.join(run.workdir, "results.json"), results)
  run.writer.flush()
  run.ckpts.close()
  return results


def _soup_results(run: Run, device_variables, steps: list[int]) -> dict:
  """results.json's soup fields: the soup's steps and its validation figures."""
  val = evaluate(run, "val", device_variables)
  logging.info("Soup of the %d best validation passes (steps %s): val AUC %.4f ACC %.4f.",
               len(steps), steps, val["auc"], val["acc"])
  return {"soup_steps": steps, "soup_val_auc": val["auc"], "soup_val_acc": val["acc"],
          "soup_val_loss": val["loss"]}


def _results(run: Run, loop: LoopState, test: dict, tta: dict) -> dict:
  """The fields of results.json."""
  config = run.config
  last_stage = run.stages[-1][0]
  return {
      "arch": config.model.arch,
      "init": config.model.init,
      "norm": config.model.norm,
      "model": config.model.to_dict(),  # every model field: truncate_at, transfer_up_to, ...
      "image_size": config.data.image_size,
      "dataset": run.info.name,
      "num_classes": run.info.num_classes,
      "class_names": list(run.info.class_names),  # read by jaxbn.predict --workdir
      "multi_label": run.info.multi_label,
      "strategy": {name: stage.strategy for name, stage in run.stages},
      "bn_stats": config.bn_stats,
      "bn_target_batches": config.get("bn_target_batches", 0),
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
      "total_steps": loop.step,
      "wall_time_s": round(run.wall(loop), 2),
      "trainable_params": run.trainable.get(last_stage, 0),
      "trainable_params_per_stage": run.trainable,
      "total_params": run.total_params,
      "devices": run.par.num_devices,
      "parallel": run.par.mode,
      "history": loop.history,
      "test_skipped": test["auc"] is None,
      "ema_decay": config.get("ema_decay", 0.0),
      "soup_size": config.get("soup_size", 0),
      **tta,
      "config": config.to_dict(),
  }


def tta_results(run: Run, variables, eval_test: bool = True) -> dict:
  """``tta_*`` fields of results.json: validation (and test) AUC/ACC of ``variables`` with
  test-time augmentation (jaxbn.tta), reported beside the plain scores; {} when off."""
  if run.tta_step is None:
    return {}
  out = {"tta": list(tta_lib.parse_views(run.config.tta))}
  for split in ("val", "test") if eval_test else ("val",):
    m = evaluate(run, split, variables, run.tta_step)
    out.update({f"tta_{split}_auc": m["auc"], f"tta_{split}_acc": m["acc"]})
  logging.info("TTA (%s): %s", run.config.tta,
               {k: round(v, 4) for k, v in out.items() if isinstance(v, float)})
  return out
