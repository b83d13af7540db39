r"""Single operations, XLA against PyTorch, at the shapes of the benchmark's networks.

  python -m jaxbn.bench_ops --batch_size=16 --image_size=112 --reps=20

Where the train step's time goes is mostly convolutions: forward, and the
input gradient (backward through a frozen conv, all that ``bn+head`` needs),
plus the weight gradient for ``full``. This module times each of them alone —
``jax.jit`` of ``lax.conv_general_dilated`` (NHWC/HWIO, jaxbn's layout) and its
VJP, against ``torch.nn.functional.conv2d`` on ``channels_last`` tensors and
its autograd — interleaved, same threads, and prints the ratio XLA / torch per
op (median of the pairwise ratios, and the ratio of the fastest repetitions,
which other processes on a shared machine disturb least). It separates "XLA's
CPU convolution is slower" from "jaxbn's graph around the convolutions is
slower".
"""

from __future__ import annotations

import statistics
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 16, "Batch size.")
flags.DEFINE_integer("image_size", 112, "Network input size (feature maps scale with it).")
flags.DEFINE_integer("reps", 20, "Timed repetitions per op.")
flags.DEFINE_string("out", None, "Optional JSON file for the measurements.")


def conv_shapes(image_size: int) -> list[tuple[str, int, int, int, int, int, int]]:
  """(name, H=W of the input, C_in, C_out, k, stride, groups) of representative convs."""
  s = image_size
  return [
      ("resnet50 conv1 7x7/2", s, 3, 64, 7, 2, 1),
      ("resnet50 layer1 3x3", s // 4, 64, 64, 3, 1, 1),
      ("resnet50 layer1 1x1 64->256", s // 4, 64, 256, 1, 1, 1),
      ("resnet50 layer2 3x3", s // 8, 128, 128, 3, 1, 1),
      ("resnet50 layer3 3x3", s // 16, 256, 256, 3, 1, 1),
      ("resnet50 layer3 1x1 1024->256", s // 16, 1024, 256, 1, 1, 1),
      ("resnet50 layer4 3x3", s // 32, 512, 512, 3, 1, 1),
      ("lite0 block1 1x1 16->96", s // 2, 16, 96, 1, 1, 1),
      ("lite0 block1 dw 3x3/2", s // 2, 96, 96, 3, 2, 96),
      ("lite0 block5 dw 5x5", s // 16, 480, 480, 5, 1, 480),
  ]


def _time(fn, reps):
  fn()
  fn()
  out = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t0)
  return out


def measure(batch_size: int, image_size: int, reps: int) -> list[dict]:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  import torch.nn.functional as F

  from jaxbn import bench_torch
  from jaxbn.models.layers import depthwise_conv_shifts

  bench_torch.use_threads_like_xla()
  rows = []
  rng = np.random.default_rng(0)
  for name, hw, cin, cout, k, stride, groups in conv_shapes(image_size):
    x = rng.normal(size=(batch_size, hw, hw, cin)).astype(np.float32)
    w = rng.normal(size=(k, k, cin // groups, cout)).astype(np.float32) * 0.05
    pad = [(k // 2, k // 2)] * 2

    def jconv(x, w):
      if groups > 1:  # what jaxbn runs on CPU for depthwise convs
        return depthwise_conv_shifts(x, w, stride, pad)
      return jax.lax.conv_general_dilated(x, w, (stride, stride), pad,
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))

    fwd = jax.jit(jconv)
    dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: jconv(x, w), x)[1](g)[0])
    dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: jconv(x, w), w)[1](g)[0])
    jx, jw = jnp.asarray(x), jnp.asarray(w)
    y = fwd(jx, jw)
    g = jnp.ones_like(y)

    tx = torch.from_numpy(x).permute(0, 3, 1, 2)  # channels_last NCHW view
    tw = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))).contiguous(
        memory_format=torch.channels_last)
    tg = torch.ones(tuple(y.shape[i] for i in (0, 3, 1, 2))).contiguous(
        memory_format=torch.channels_last)
    tconv = lambda x, w: F.conv2d(x, w, stride=stride, padding=k // 2, groups=groups)  # noqa
    with torch.no_grad():
      ty = tconv(tx, tw)
    err = float(np.abs(ty.permute(0, 2, 3, 1).numpy() - np.asarray(y)).max())

    def t_dx():
      xx = tx.detach().requires_grad_(True)
      return torch.autograd.grad(tconv(xx, tw), xx, tg)[0]

    def t_dw():
      ww = tw.detach().requires_grad_(True)
      return torch.autograd.grad(tconv(tx, ww), ww, tg)[0]

    def t_fwd():
      with torch.no_grad():
        return tconv(tx, tw)

    pairs = {
        "forward": (lambda: fwd(jx, jw).block_until_ready(), t_fwd),
        "input grad (incl. fwd in torch)": (lambda: dx(jx, jw, g).block_until_ready(), t_dx),
        "weight grad (incl. fwd in torch)": (lambda: dw(jx, jw, g).block_until_ready(), t_dw),
    }
    for what, (jf, tf) in pairs.items():
      jf(), jf(), tf(), tf()
      jt, tt = [], []
      for _ in range(reps):  # interleaved
        t0 = time.perf_counter()
        jf()
        jt.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        tf()
        tt.append(time.perf_counter() - t0)
      rows.append({
          "op": name, "pass": what, "batch_size": batch_size, "hw": hw, "cin": cin,
          "cout": cout, "k": k, "stride": stride, "groups": groups,
          "xla_ms": round(1e3 * statistics.median(jt), 3),
          "torch_ms": round(1e3 * statistics.median(tt), 3),
          "ratio_xla_to_torch": round(statistics.median(a / b for a, b in zip(jt, tt)), 2),
          # Fastest repetition of each: the least disturbed by other processes.
          "xla_min_ms": round(1e3 * min(jt), 3), "torch_min_ms": round(1e3 * min(tt), 3),
          "ratio_of_min": round(min(jt) / min(tt), 2),
          "max_abs_diff_forward": err, "threads": torch.get_num_threads(),
      })
  return rows


def markdown(rows: list[dict]) -> str:
  lines = ["| op | pass | XLA ms | torch ms | × torch | XLA min ms | torch min ms | "
           "× torch (min) |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['op']} | {r['pass']} | {r['xla_ms']:.2f} | {r['torch_ms']:.2f} | "
                 f"{r['ratio_xla_to_torch']:.2f} | {r['xla_min_ms']:.2f} | "
                 f"{r['torch_min_ms']:.2f} | {r['ratio_of_min']:.2f} |")
  return "\n".join(lines)


def main(argv):
  del argv
  rows = measure(FLAGS.batch_size, FLAGS.image_size, FLAGS.reps)
  print(markdown(rows))
  if FLAGS.out:
    from jaxbn.io import write_json_atomic

    write_json_atomic(FLAGS.out, rows)


if __name__ == "__main__":
  app.run(main)
