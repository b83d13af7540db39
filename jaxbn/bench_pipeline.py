r"""End-to-end throughput of a training run: input pipeline, train step, evaluation.

  python -m jaxbn.bench --pipeline [--out=FILE.json] \
      [--pipeline_config=configs/bn_only.py] [--pipeline_overrides=max_steps=146]

Three figures for the run a config describes (default: ``configs/bn_only.py``,
the default run):

1. the input pipeline alone (``jaxbn.data.pipeline.train_iterator``: decode,
   augment, normalise, batch, prefetch), images/s pulled on the host;
2. the train step alone (the run's model, strategy ``bn+head``, batch and image
   size, on one batch already on the device), images/s;
3. the run itself (``jaxbn.train.train_and_evaluate`` in a temporary
   directory) with every call of ``jaxbn.train.evaluate`` timed: the share of the
   wall time spent in evaluation.

(1) and (2) are measured in alternating rounds so both see the same machine
conditions; the pipeline should deliver several times what the step consumes
(the step then never waits for data: the iterator prefetches).
"""

from __future__ import annotations

import statistics
import tempfile
import time

from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("pipeline_config", "configs/bn_only.py", "Config file of the run to measure.")
flags.DEFINE_string("pipeline_overrides", "", "key=value,... overrides (jaxbn.config syntax).")
flags.DEFINE_integer("pipeline_batches", 20, "Batches (and steps) per round.")
flags.DEFINE_integer("pipeline_rounds", 3, "Alternating pipeline / step rounds.")
flags.DEFINE_bool("pipeline_run", True, "Also run the whole training run for the eval share.")


def _pipeline_rate(it, n: int, batch_size: int) -> float:
  t0 = time.perf_counter()
  for _ in range(n):
    next(it)
  return n * batch_size / (time.perf_counter() - t0)


def throughput(config, batches: int, rounds: int) -> dict:
  """Images/s of the train iterator alone and of the train step alone, alternating."""
  import jax

  from jaxbn import masks, setup, step as step_lib
  from jaxbn.data import pipeline
  from jaxbn.models import get_spec
  from jaxbn.parallel import DataParallel

  info = pipeline.get_dataset_info(config.data)
  spec = get_spec(config.model.arch)
  it = pipeline.train_iterator(
      config.data, batch_size=config.batch_size, image_size=config.data.image_size,
      mean=spec.mean, std=spec.std, seed=0, process_index=0, process_count=1)
  first = next(it)

  par = DataParallel(config.parallel)
  model = setup.build_model(config, info.num_classes, bn_axis_name=par.axis_name)
  variables = setup.initial_variables(config, model, jax.random.key(0))
  stage = config.finetune
  labels = masks.make_labels(variables["params"], stage.strategy,
                             batch_stats=variables["batch_stats"], arch=config.model.arch)
  tx = setup.build_optimizer(config, stage, 1000, labels)
  state = par.put_state(step_lib.TrainState.create(variables, tx))
  step = par.compile_train(step_lib.make_train_step(
      model, tx, labels, bn_stats=config.bn_stats, multi_label=info.multi_label,
      axis_name=par.axis_name))
  batch = par.put_batch(first)
  state, m = step(state, batch, jax.random.key(0), 1.0)  # compile
  jax.block_until_ready(m)

  pipe, steps = [], []
  for _ in range(rounds):
    pipe.append(_pipeline_rate(it, batches, config.batch_size))
    t0 = time.perf_counter()
    for _ in range(batches):
      state, m = step(state, batch, jax.random.key(0), 1.0)
    jax.block_until_ready((state, m))
    steps.append(batches * config.batch_size / (time.perf_counter() - t0))
  return {
      "pipeline_images_per_s": round(statistics.median(pipe), 1),
      "step_images_per_s": round(statistics.median(steps), 1),
      "pipeline_to_step": round(statistics.median(p / s for p, s in zip(pipe, steps)), 2),
      "pipeline_rounds": [round(x, 1) for x in pipe],
      "step_rounds": [round(x, 1) for x in steps],
      "batch_size": config.batch_size, "image_size": config.data.image_size,
      "arch": config.model.arch, "strategy": stage.strategy, "dataset": info.name,
      "augment": config.data.augment, "device": jax.devices()[0].device_kind,
  }


def eval_share(config) -> dict:
  """Runs ``train_and_evaluate`` once, timing every evaluation; the share of wall time."""
  from jaxbn import train

  spent = []
  evaluate = train.evaluate

  def timed(*args, **kwargs):
    t0 = time.perf_counter()
    out = evaluate(*args, **kwargs)
    spent.append(time.perf_counter() - t0)
    return out

  train.evaluate = timed
  try:
    with tempfile.TemporaryDirectory() as workdir:
      t0 = time.perf_counter()
      results = train.train_and_evaluate(config, workdir)
      wall = time.perf_counter() - t0
  finally:
    train.evaluate = evaluate
  return {
      "run_wall_s": round(wall, 1), "eval_s": round(sum(spent), 1), "evaluations": len(spent),
      "eval_share": round(sum(spent) / wall, 3), "total_steps": results["total_steps"],
      "test_auc": round(results["test_auc"], 4),
      "train_images_per_s_run": round(
          results["total_steps"] * config.batch_size / max(wall - sum(spent), 1e-9), 1),
  }


def main(out: str | None) -> None:
  import json

  from jaxbn import config as config_lib  # ml_collections: the 'train' extra, imported on use

  config = config_lib.load_config_file(
      f"{FLAGS.pipeline_config}:{FLAGS.pipeline_overrides}" if FLAGS.pipeline_overrides
      else FLAGS.pipeline_config)
  row = {"config": FLAGS.pipeline_config, "overrides": FLAGS.pipeline_overrides,
         **throughput(config, FLAGS.pipeline_batches, FLAGS.pipeline_rounds)}
  print(f"input pipeline {row['pipeline_images_per_s']} images/s, train step "
        f"{row['step_images_per_s']} images/s: pipeline / step = {row['pipeline_to_step']}")
  if FLAGS.pipeline_run:
    row.update(eval_share(config))
    print(f"run: {row['run_wall_s']} s wall, {row['eval_s']} s in {row['evaluations']} "
          f"evaluations ({100 * row['eval_share']:.1f}%)")
  print(json.dumps(row, indent=1))
  if out:
    from jaxbn.io import write_json_atomic

    write_json_atomic(out, row)
