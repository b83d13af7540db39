r"""Benchmarks: train-step time of fine-tuning strategies, side by side.

  python -m jaxbn.bench --archs=resnet50,efficientnet_lite0 \
      --strategies=full,bn+head,head --batch_size=32 --image_size=112

Every (arch, strategy) train step is compiled first, then the steps are timed
round-robin (one repetition of each in turn, ``--reps`` times) so that all
configurations see the same machine conditions; the table reports the median
time per step, images/s and the ratio to ``full`` of the same architecture.
Absolute times mean something only on an accelerator; on CPU read the ratios.

``--norms=bn,acnorm`` also times each configuration with every listed
normalisation layer (``create_model(norm=...)``) and adds the column "× bn":
the step time relative to the same (arch, strategy) with ``bn`` — e.g. the cost
of AC-Norm's per-layer ``(C, C)`` recalibration::

  python -m jaxbn.bench --archs=resnet50 --strategies=full --norms=bn,acnorm \
      --bn_stats=batch
The step is jaxbn's real one (``jaxbn.step.make_train_step``, BN statistics
frozen as in the paper, optimizer built by ``jaxbn.masks``), on synthetic data.

``--peers=torch`` also times the same step in PyTorch (:mod:`jaxbn.bench_torch`:
the same network in ``torch.nn``, the same weights, frozen parameters with
``requires_grad_(False)``, BN in eval mode, ``channels_last``, Adam over the
trainable parameters), interleaved with jaxbn's steps, and adds the column
"× torch" (jaxbn time / PyTorch time)::

  python -m jaxbn.bench --archs=resnet50,efficientnet_lite0 --strategies=full,bn+head \
      --batch_size=16 --image_size=112 --peers=torch

``--grad_wrt=trainable,all`` times jaxbn's step as it is (gradients of the
trainable leaves only) and the earlier one (gradients of every leaf, zero
updates for the frozen ones) side by side. ``--pipeline`` measures the input
pipeline and the default run's evaluation share instead (:mod:`jaxbn.bench_pipeline`).
"""

from __future__ import annotations

from jaxbn import extras

if __name__ == "__main__":
  # The step benchmarks need no TensorFlow (a GPU box without it runs them); --pipeline does.
  extras.require("train", "python -m jaxbn.bench", only=("absl", "tqdm"))

import importlib.util
import os
import statistics
import time

from absl import app, flags

from jaxbn import bench_pipeline  # noqa: F401  (defines the --pipeline_* flags)
from jaxbn import cli

FLAGS = flags.FLAGS
flags.DEFINE_list("archs", ["resnet50", "efficientnet_lite0"], "Architectures.")
flags.DEFINE_list("strategies", ["full", "bn+head", "head"], "jaxbn.masks strategies.")
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_integer("image_size", 112, "Square input size.")
flags.DEFINE_integer("reps", 10, "Timed steps per configuration.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_enum("bn_stats", "frozen", ["frozen", "batch"], "BN statistics mode.")
flags.DEFINE_list("norms", ["bn"], "Normalisation layers (jaxbn.models.norm.NORMS).")
flags.DEFINE_string("out", None, "Optional JSON file for the measurements.")
flags.DEFINE_bool("nnx", False, "Also time the Flax NNX train step (jaxbn.nnx: the backbone "
                  "as an NNX module, gradients only for the strategy's nnx_filter) of every "
                  "configuration, side by side with Linen; adds the columns api and × linen.")
flags.DEFINE_list("peers", [], "Frameworks to time the same steps in: torch.")
flags.DEFINE_list("grad_wrt", ["trainable"], "jaxbn.step grad_wrt variants: trainable, all.")
flags.DEFINE_bool("pipeline", False, "Input-pipeline and end-to-end mode (jaxbn.bench_pipeline).")
flags.DEFINE_integer("devices", 1, "Data-parallel devices: batch split over a jit Mesh of the "
                     "first N devices, state replicated (0 = all). Fake CPU devices: "
                     "JAX_NUM_CPU_DEVICES=8.")


def synthetic_batch(batch_size: int, image_size: int) -> dict:
  """The benchmarks' one fixed batch: normal images, 2-class labels (seed 0)."""
  import jax.numpy as jnp
  import numpy as np

  rng = np.random.default_rng(0)
  return {
      "image": jnp.asarray(rng.normal(size=(batch_size, image_size, image_size, 3)), jnp.float32),
      "label": jnp.asarray(rng.integers(0, 2, size=(batch_size,)), jnp.int32),
  }


def build_step(arch: str, strategy: str, batch_size: int, image_size: int, dtype, bn_stats: str,
               norm: str = "bn", grad_wrt: str = "trainable", peers=()):
  """A compiled train step, its initial state and a batch, for one configuration."""
  import jax
  import optax

  from jaxbn import masks, step as step_lib
  from jaxbn.models import create_model, init_variables

  model = create_model(arch, num_classes=2, dtype=dtype, norm=norm)
  variables = init_variables(model, jax.random.key(0), 64)
  labels = masks.make_labels(variables["params"], strategy, batch_stats=variables["batch_stats"],
                             arch=arch)
  tx = masks.make_optimizer(optax.adam(1e-4), labels)
  state = step_lib.TrainState.create(variables, tx)
  fn = jax.jit(
      step_lib.make_train_step(model, tx, labels, bn_stats=bn_stats, multi_label=False,
                               grad_wrt=grad_wrt),
      donate_argnums=(0,),
  )
  batch = synthetic_batch(batch_size, image_size)
  trainable, total = masks.count(variables["params"], labels)
  peer_steps = {}
  if "torch" in peers:  # the same step in PyTorch, same weights and batch
    peer_steps["torch"] = _torch_step(arch, variables, labels, batch, bn_stats, dtype)
  return fn, state, batch, trainable, total, peer_steps


def _torch_step(arch, variables, labels, batch, bn_stats, dtype):
  """The PyTorch peer's step on the device matching JAX's, bf16 autocast for a bf16 dtype."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from jaxbn import bench_torch

  device = bench_torch.peer_device(jax.default_backend())
  if device == "cpu":
    bench_torch.use_threads_like_xla()
  model, opt = bench_torch.build_peer(arch, jax_to_numpy(variables), labels, bn_stats=bn_stats,
                                      device=device)
  images = bench_torch.to_input(np.asarray(batch["image"]), device=device)
  targets = torch.from_numpy(np.asarray(batch["label"]).astype(np.int64)).to(device)
  return bench_torch.make_step(model, opt, images, targets,
                               autocast=torch.bfloat16 if dtype == jnp.bfloat16 else None)


def jax_to_numpy(tree):
  import jax
  import numpy as np

  return jax.tree.map(np.asarray, tree)


def _place(state, batch, devices: int):
  """The state replicated and the batch split over a Mesh of ``devices`` devices."""
  import jax
  import numpy as np

  from jaxbn.parallel import DataParallel

  par = DataParallel("jit", jax.devices()[:devices])
  return par.put_state(state), par.put_batch(jax.tree.map(np.asarray, batch))


def _compile_and_warm(fn, state, batch):
  """Runs ``fn`` twice (compilation, then one warm step); returns the state and compile seconds."""
  import jax

  t0 = time.perf_counter()
  state, m = fn(state, batch, jax.random.key(0), 1.0)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  state, m = fn(state, batch, jax.random.key(0), 1.0)
  jax.block_until_ready(m)
  return state, compile_s


def _timed_step(run: dict) -> None:
  """One timed step of ``run`` (its ``fn``, ``state``, ``batch``); appends to ``run['times']``."""
  import jax

  t0 = time.perf_counter()
  run["state"], m = run["fn"](run["state"], run["batch"], jax.random.key(0), 1.0)
  jax.block_until_ready((run["state"], m))
  run["times"].append(time.perf_counter() - t0)


def run_benchmark(archs, strategies, *, batch_size, image_size, reps, dtype="float32",
                  bn_stats="frozen", progress=True, devices=1, norms=("bn",),
                  grad_wrt=("trainable",), peers=()) -> list[dict]:
  import jax
  from tqdm.auto import tqdm

  from jaxbn.models.registry import DTYPES
  dt = DTYPES[dtype]
  devices = devices or jax.device_count()
  configs = [(a, s, n, g) for a in archs for s in strategies for n in norms for g in grad_wrt
             if g == grad_wrt[0] or s != "full"]  # "full": both variants are the same step
  runs = {}
  for arch, strategy, norm, g in tqdm(configs, desc="compile", disable=not progress):
    fn, state, batch, trainable, total, peer_steps = build_step(
        arch, strategy, batch_size, image_size, dt, bn_stats, norm, g,
        peers if g == grad_wrt[0] else ())
    if devices > 1:
      state, batch = _place(state, batch, devices)
    state, compile_s = _compile_and_warm(fn, state, batch)
    for peer in peer_steps.values():
      peer()  # one warm step
    runs[(arch, strategy, norm, g)] = dict(fn=fn, state=state, batch=batch, times=[],
                                           trainable=trainable, total=total, compile_s=compile_s,
                                           peers=peer_steps, peer_times={p: [] for p in peer_steps})
  with tqdm(total=reps * len(configs), desc="timing", disable=not progress) as bar:
    for _ in range(reps):
      for key in configs:
        r = runs[key]
        _timed_step(r)
        for name, peer_step in r["peers"].items():  # the peer right after: same conditions
          t0 = time.perf_counter()
          peer_step().item()
          r["peer_times"][name].append(time.perf_counter() - t0)
        bar.update()
  rows = []
  for arch, strategy, norm, g in configs:
    r = runs[(arch, strategy, norm, g)]
    med = statistics.median(r["times"])
    full = runs.get((arch, "full", norm, grad_wrt[0]))
    bn = runs.get((arch, strategy, "bn", g))
    peer_cols = {}
    for name, times in r["peer_times"].items():
      peer_cols[f"{name}_ms_per_step"] = round(1e3 * statistics.median(times), 2)
      peer_cols[f"{name}_ratio_to_full"] = None
      # jaxbn / peer, pair by pair (each peer step ran right after jaxbn's).
      peer_cols[f"ratio_to_{name}"] = round(
          statistics.median(a / b for a, b in zip(r["times"], times)), 3)
      # Fastest repetition of each: the least disturbed by other processes.
      peer_cols[f"{name}_ms_min"] = round(1e3 * min(times), 2)
      peer_cols[f"ratio_to_{name}_min"] = round(min(r["times"]) / min(times), 3)
    rows.append({
        "arch": arch, "strategy": strategy, "norm": norm, "grad_wrt": g,
        "batch_size": batch_size,
        "image_size": image_size,
        "dtype": dtype, "bn_stats": bn_stats, "device": jax.devices()[0].device_kind,
        "devices": devices,
        "ms_per_step": round(1e3 * med, 2), "ms_min": round(1e3 * min(r["times"]), 2),
        "images_per_s": round(batch_size / med, 1),
        "ratio_to_full": round(med / statistics.median(full["times"]), 3) if full else None,
        "ratio_to_bn": round(med / statistics.median(bn["times"]), 3) if bn else None,
        "trainable_params": r["trainable"], "total_params": r["total"],
        "compile_s": round(r["compile_s"], 1), "reps": reps, **peer_cols,
    })
  for row in rows:  # the peer's own bn+head / full ratio
    for name in peers:
      full_row = next((x for x in rows if x["arch"] == row["arch"] and x["strategy"] == "full"
                       and f"{name}_ms_per_step" in x), None)
      if full_row and f"{name}_ms_per_step" in row:
        row[f"{name}_ratio_to_full"] = round(
            row[f"{name}_ms_per_step"] / full_row[f"{name}_ms_per_step"], 3)
  return rows


def markdown(rows: list[dict]) -> str:
  norms = any(r.get("norm", "bn") != "bn" for r in rows)
  grads = len({r.get("grad_wrt", "trainable") for r in rows}) > 1
  peers = sorted({k[:-len("_ms_per_step")] for r in rows for k in r
                  if k.endswith("_ms_per_step") and k != "ms_per_step"})
  lines = [
      "| arch | strategy |" + (" norm |" if norms else "") + (" grad wrt |" if grads else "")
      + " trainable params | ms/step | images/s | × full step |" + (" × bn |" if norms else "")
      + "".join(f" {p} ms/step | {p} × full step | × {p} |" for p in peers),
      "|---|---|" + ("---|" if norms else "") + ("---|" if grads else "") + "---:|---:|---:|---:|"
      + ("---:|" if norms else "") + "---:|---:|---:|" * len(peers),
  ]
  fmt = lambda x: f"{x:.2f}" if x is not None else "—"  # noqa: E731
  for r in rows:
    lines.append(f"| {r['arch']} | {r['strategy']} |" + (f" {r['norm']} |" if norms else "")
                 + (f" {r.get('grad_wrt', 'trainable')} |" if grads else "")
                 + f" {r['trainable_params']:,} | {r['ms_per_step']:.1f} | "
                 f"{r['images_per_s']:.1f} | {fmt(r['ratio_to_full'])} |"
                 + (f" {fmt(r.get('ratio_to_bn'))} |" if norms else "")
                 + "".join(f" {r[p + '_ms_per_step']:.1f} | {fmt(r[p + '_ratio_to_full'])} | "
                           f"{fmt(r['ratio_to_' + p])} |" if p + "_ms_per_step" in r
                           else " — | — | — |" for p in peers))
  return "\n".join(lines)


def build_nnx_step(arch: str, strategy: str, batch_size: int, image_size: int, dtype,
                   bn_stats: str):
  """:func:`build_step` for the NNX model of ``arch`` (``jaxbn.nnx.make_train_step``)."""
  import jax
  import optax
  from flax import nnx

  from jaxbn import nnx as jaxbn_nnx

  model = jaxbn_nnx.create_model(arch, num_classes=2, dtype=dtype, rngs=nnx.Rngs(0))
  fn, state = jaxbn_nnx.make_train_step(model, strategy, optax.adam(1e-4), bn_stats=bn_stats,
                                        arch=arch)
  batch = synthetic_batch(batch_size, image_size)
  f = jaxbn_nnx.nnx_filter(model, strategy, arch=arch)
  size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
  return (jax.jit(fn, donate_argnums=(0,)), state, batch, size(nnx.state(model, f)),
          size(nnx.state(model, nnx.Param)))


def run_nnx_benchmark(archs, strategies, *, batch_size, image_size, reps, dtype="float32",
                      bn_stats="frozen", progress=True) -> list[dict]:
  """Linen and NNX train steps of every (arch, strategy), timed round-robin in one run."""
  import jax
  from tqdm.auto import tqdm

  from jaxbn.models.registry import DTYPES

  dt = DTYPES[dtype]
  builders = {"linen": build_step, "nnx": build_nnx_step}
  configs = [(a, s, api) for a in archs for s in strategies for api in builders]
  runs = {}
  for arch, strategy, api in tqdm(configs, desc="compile", disable=not progress):
    fn, state, batch, trainable, total = builders[api](arch, strategy, batch_size, image_size,
                                                       dt, bn_stats)[:5]  # no torch peers
    state, compile_s = _compile_and_warm(fn, state, batch)
    runs[(arch, strategy, api)] = dict(fn=fn, state=state, batch=batch, times=[],
                                       trainable=trainable, total=total, compile_s=compile_s)
  with tqdm(total=reps * len(configs), desc="timing", disable=not progress) as bar:
    for _ in range(reps):
      for key in configs:
        r = runs[key]
        _timed_step(r)
        bar.update()
  med = {key: statistics.median(r["times"]) for key, r in runs.items()}
  ratio = lambda key, ref: round(med[key] / med[ref], 3) if ref in med else None  # noqa: E731
  return [{
      "arch": arch, "strategy": strategy, "api": api, "batch_size": batch_size,
      "image_size": image_size, "dtype": dtype, "bn_stats": bn_stats,
      "device": jax.devices()[0].device_kind, "ms_per_step": round(1e3 * med[key], 2),
      "images_per_s": round(batch_size / med[key], 1),
      "ratio_to_full": ratio(key, (arch, "full", api)),
      "ratio_to_linen": ratio(key, (arch, strategy, "linen")),
      "trainable_params": runs[key]["trainable"], "total_params": runs[key]["total"],
      "compile_s": round(runs[key]["compile_s"], 1), "reps": reps,
  } for key in configs for arch, strategy, api in [key]]


def nnx_markdown(rows: list[dict]) -> str:
  fmt = lambda x: f"{x:.2f}" if x is not None else "—"  # noqa: E731
  lines = ["| arch | strategy | api | trainable params | ms/step | × full step (same api) | "
           "× linen |", "|---|---|---|---:|---:|---:|---:|"]
  lines += [f"| {r['arch']} | {r['strategy']} | {r['api']} | {r['trainable_params']:,} | "
            f"{r['ms_per_step']:.1f} | {fmt(r['ratio_to_full'])} | {fmt(r['ratio_to_linen'])} |"
            for r in rows]
  return "\n".join(lines)


def main(argv):
  del argv
  cli.quiet_library_logs()
  if "torch" in FLAGS.peers:  # JAX would take 75 % of a GPU's memory that torch shares
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  import jax

  if FLAGS.pipeline:
    extras.require("train", "python -m jaxbn.bench --pipeline")
    return bench_pipeline.main(FLAGS.out)
  if FLAGS.nnx:
    rows = run_nnx_benchmark(FLAGS.archs, FLAGS.strategies, batch_size=FLAGS.batch_size,
                             image_size=FLAGS.image_size, reps=FLAGS.reps, dtype=FLAGS.dtype,
                             bn_stats=FLAGS.bn_stats)
    print(f"\nTrain step, Linen vs NNX, batch {FLAGS.batch_size}, {FLAGS.image_size}px, "
          f"{FLAGS.dtype}, BN statistics {FLAGS.bn_stats}, {jax.devices()[0].device_kind}, "
          f"median of {FLAGS.reps} round-robin repetitions:\n")
    print(nnx_markdown(rows))
    if FLAGS.out:
      from jaxbn.io import write_json_atomic

      write_json_atomic(FLAGS.out, rows)
    return

  unknown = set(FLAGS.peers) - {"torch"}
  if unknown:
    raise SystemExit(f"error: unknown --peers {sorted(unknown)}; known: torch.")
  if "torch" in FLAGS.peers and importlib.util.find_spec("torch") is None:
    raise SystemExit("error: --peers=torch needs PyTorch: pip install torch (CPU build is "
                     "enough).")
  rows = run_benchmark(FLAGS.archs, FLAGS.strategies, batch_size=FLAGS.batch_size,
                       image_size=FLAGS.image_size, reps=FLAGS.reps, dtype=FLAGS.dtype,
                       bn_stats=FLAGS.bn_stats, devices=FLAGS.devices, norms=FLAGS.norms,
                       grad_wrt=FLAGS.grad_wrt, peers=FLAGS.peers)
  print(f"\nTrain step, batch {FLAGS.batch_size}, {FLAGS.image_size}px, {FLAGS.dtype}, BN "
        f"statistics {FLAGS.bn_stats}, {FLAGS.devices or jax.device_count()} x "
        f"{jax.devices()[0].device_kind}, "
        f"median of {FLAGS.reps} round-robin repetitions:\n")
  print(markdown(rows))
  if FLAGS.out:
    from jaxbn.io import write_json_atomic

    write_json_atomic(FLAGS.out, rows)


if __name__ == "__main__":
  app.run(main)
