"""The benchmark's PyTorch peers compute jaxbn's step: same loss, same Adam update, same freezing."""

import jax
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

from jaxbn import bench, bench_torch, masks, step as step_lib  # noqa: E402
from jaxbn.models import create_model, init_variables  # noqa: E402

ARCH = "resnet18"  # the fastest peer; same building blocks as resnet50 but the bottleneck


@pytest.fixture(scope="module")
def setup():
  model = create_model(ARCH, num_classes=2)
  variables = jax.tree.map(np.asarray, init_variables(model, jax.random.key(0), 32))
  # Non-trivial running statistics and affines, so eval-mode BN is really tested.
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map_with_path(
      lambda p, x: (x + rng.uniform(0.1, 0.5, x.shape).astype(np.float32)
                    if p[-1].key in ("var", "scale", "mean", "bias") else x), variables)
  labels = masks.make_labels(variables["params"], "bn+head", batch_stats=variables["batch_stats"],
                             arch=ARCH)
  images = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
  targets = np.array([0, 1, 1, 0], np.int32)
  return model, variables, labels, images, targets


def test_peer_loss_equals_jaxbn_loss(setup):
  model, variables, labels, images, targets = setup
  logits = jax.jit(lambda v, x: model.apply(v, x, train=True, use_running_average=True))(
      variables, images)
  jax_loss = float(step_lib.loss_per_example(logits, targets, multi_label=False).mean())
  peer, _ = bench_torch.build_peer(ARCH, variables, labels)
  with torch.no_grad():
    torch_loss = float(bench_torch.loss_of(peer, bench_torch.to_input(images),
                                           torch.from_numpy(targets.astype(np.int64))))
  assert abs(jax_loss - torch_loss) < 1e-5 * max(1.0, abs(jax_loss))
  assert abs(jax_loss - np.log(2)) > 1e-3  # a real, non-degenerate loss


def test_peer_step_equals_jaxbn_step(setup):
  model, variables, labels, images, targets = setup
  lr = 1e-2
  tx = masks.make_optimizer(optax.adam(lr), labels)
  state = step_lib.TrainState.create(variables, tx)
  fn = jax.jit(step_lib.make_train_step(model, tx, labels, bn_stats="frozen", multi_label=False))
  state, _ = fn(state, {"image": images, "label": targets}, jax.random.key(0), 1.0)

  peer, opt = bench_torch.build_peer(ARCH, variables, labels, lr=lr)
  assert sum(p.requires_grad for p in peer.parameters()) == 2 * 20 + 2  # 20 BN (γ, β) + fc (w, b)
  step = bench_torch.make_step(peer, opt, bench_torch.to_input(images),
                               torch.from_numpy(targets.astype(np.int64)))
  step()
  after = bench_torch.state_dict_of(ARCH, {"params": state.params,
                                           "batch_stats": state.batch_stats})
  before = bench_torch.state_dict_of(ARCH, variables)
  peer_sd = peer.state_dict()
  trainable = bench_torch.torch_labels(ARCH, labels)
  for key, expected in after.items():
    got = peer_sd[key].contiguous().numpy()
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5, err_msg=key)
    if trainable.get(key) != masks.TRAINABLE:  # frozen weights and BN statistics untouched
      np.testing.assert_array_equal(got, before[key].numpy(), err_msg=key)


def test_markdown_has_the_peer_columns():
  row = {"arch": "resnet18", "strategy": "bn+head", "norm": "bn", "grad_wrt": "trainable",
         "trainable_params": 10, "ms_per_step": 2.0, "images_per_s": 8.0, "ratio_to_full": 0.5,
         "torch_ms_per_step": 1.0, "torch_ratio_to_full": 0.6, "ratio_to_torch": 2.0}
  text = bench.markdown([row])
  assert "× torch" in text.splitlines()[0] and "| 2.00 |" in text.splitlines()[2]


def test_peer_autocast_computes_in_bf16_with_float32_weights(setup):
  """The bf16 peer (jaxbn's --dtype=bfloat16 on a GPU): bf16 activations, float32 parameters."""
  model, variables, labels, images, targets = setup
  peer, opt = bench_torch.build_peer(ARCH, variables, labels)
  seen = []
  peer.fc.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
  x, y = bench_torch.to_input(images), torch.from_numpy(targets.astype(np.int64))
  loss16 = float(bench_torch.make_step(peer, opt, x, y, autocast=torch.bfloat16)())
  loss32 = float(bench_torch.make_step(peer, opt, x, y)())  # after one step: a different loss
  assert seen == [torch.bfloat16, torch.float32]
  assert all(p.dtype == torch.float32 for p in peer.parameters())
  peer2, _ = bench_torch.build_peer(ARCH, variables, labels)
  with torch.no_grad():
    first32 = float(bench_torch.loss_of(peer2, x, y))
  assert loss16 != first32 and abs(loss16 - first32) < 0.05 * abs(first32)  # bf16 rounding
  assert loss32 != loss16


def test_peer_device_is_the_cpu_without_a_jax_gpu_or_cuda():
  assert bench_torch.peer_device("cpu") == "cpu"
  assert bench_torch.peer_device("gpu") == ("cuda" if torch.cuda.is_available() else "cpu")
