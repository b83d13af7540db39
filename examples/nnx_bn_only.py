r"""BN-only fine-tuning in plain Flax NNX: ImageNet EfficientNet-Lite0 on PneumoniaMNIST.

Trains only the BatchNorm scale/bias and a new 2-way head (partial transfusion,
Kanavati & Tsuneki 2021, arXiv:2102.05543) with frozen BN statistics, in a
plain NNX loop: jaxbn supplies the backbone (``jaxbn.nnx.create_model``) and
the filter of what trains (``jaxbn.masks.nnx_filter``), nothing else.

  python examples/nnx_bn_only.py                 # 150 steps, 2 min of CPU time
  python examples/nnx_bn_only.py --steps=3 --eval_every=3 --max_eval=64   # smoke test

Data: the PneumoniaMNIST npz that ships inside jaxbn (MedMNIST v2, CC BY 4.0),
read with numpy. Prints the validation AUC as it goes and one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from scipy.stats import rankdata

import jaxbn
from jaxbn import masks, nnx as jaxbn_nnx
from jaxbn.models import get_spec

ARCH = "efficientnet_lite0"
DATA = pathlib.Path(jaxbn.__file__).parent / "data" / "assets" / "pneumoniamnist.npz"


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=150, help="training steps (batch 64: 2 epochs)")
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--image_size", type=int, default=64)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--strategy", default="bn+head", help="jaxbn.masks strategy")
  p.add_argument("--eval_every", type=int, default=25)
  p.add_argument("--max_eval", type=int, default=0, help="cap on validation images (0: all)")
  p.add_argument("--data", default=str(DATA), help="a MedMNIST npz")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Binary ROC AUC as the Mann-Whitney U statistic (average ranks for ties)."""
  ranks, pos = rankdata(scores), labels == 1
  n_pos, n_neg = pos.sum(), (~pos).sum()
  return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def preprocess(images: jax.Array, size: int) -> jax.Array:
  """uint8 (N, 28, 28) -> float32 (N, size, size, 3), normalised as the checkpoint expects."""
  spec = get_spec(ARCH)
  x = images.astype(jnp.float32)[..., None] / 255.0
  x = jax.image.resize(x, (x.shape[0], size, size, 1), "bilinear")
  x = jnp.tile(x, (1, 1, 1, 3))
  return (x - jnp.asarray(spec.mean)) / jnp.asarray(spec.std)


def main(argv=None) -> dict:
  args = parse_args(argv)
  t0 = time.perf_counter()
  try:
    data = dict(np.load(args.data))
  except (OSError, ValueError) as e:
    sys.exit(f"error: cannot read --data={args.data} ({e}); pass a MedMNIST .npz file.")
  train_x, train_y = data["train_images"], data["train_labels"].reshape(-1).astype(np.int32)
  val_x, val_y = data["val_images"], data["val_labels"].reshape(-1).astype(np.int32)
  if args.max_eval:
    val_x, val_y = val_x[: args.max_eval], val_y[: args.max_eval]

  model = jaxbn_nnx.create_model(ARCH, num_classes=2, pretrained=True, dropout_rate=0.2,
                       rngs=nnx.Rngs(args.seed))
  trains = masks.nnx_filter(model, args.strategy, arch=ARCH)  # BN gamma/beta + head
  schedule = optax.cosine_decay_schedule(args.lr, max(args.steps, 1))
  optimizer = nnx.Optimizer(model, optax.adam(schedule), wrt=trains)
  n_train = sum(x.size for x in jax.tree.leaves(nnx.state(model, trains)))
  n_total = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  print(f"training {n_train:,} of {n_total:,} parameters ({args.strategy})", flush=True)

  def loss_fn(model, images, labels):
    logits = model(preprocess(images, args.image_size))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @nnx.jit
  def train_step(model, optimizer, images, labels):
    # Differentiate with respect to the selected parameters only.
    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, trains))(
        model, images, labels)
    optimizer.update(model, grads)
    return loss

  @nnx.jit
  def predict(model, images):
    return jax.nn.softmax(model(preprocess(images, args.image_size)))[:, 1]

  def evaluate() -> float:
    model.eval()
    scores = np.concatenate([np.asarray(predict(model, val_x[i: i + 256]))
                             for i in range(0, len(val_x), 256)])
    model.train()
    model.set_attributes(use_running_average=True)  # dropout on, BN statistics frozen
    return roc_auc(scores, val_y)

  model.train()
  model.set_attributes(use_running_average=True)
  rng = np.random.default_rng(args.seed)
  order, pos = rng.permutation(len(train_x)), 0
  history, reached = [], None
  for step in range(1, args.steps + 1):
    if pos + args.batch_size > len(order):
      order, pos = rng.permutation(len(train_x)), 0
    idx = order[pos: pos + args.batch_size]
    pos += args.batch_size
    loss = train_step(model, optimizer, train_x[idx], train_y[idx])
    if step % args.eval_every == 0 or step == args.steps:
      auc, wall = evaluate(), time.perf_counter() - t0
      history.append({"step": step, "loss": round(float(loss), 4), "val_auc": round(auc, 4),
                      "wall_s": round(wall, 1)})
      if reached is None and auc >= 0.95:
        reached = round(wall, 1)
      print(json.dumps(history[-1]), flush=True)
  result = {"best_val_auc": max(h["val_auc"] for h in history), "final_val_auc":
            history[-1]["val_auc"], "wall_s": round(time.perf_counter() - t0, 1),
            "wall_s_to_val_auc_0.95": reached, "trainable_params": n_train,
            "total_params": n_total, "steps": args.steps}
  print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main()
