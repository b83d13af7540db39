"""Functional PyTorch references of the torchvision backbones, for parity tests.

Only ``torch.nn.functional`` is used (torchvision is not importable in CI), and
every weight is looked up by its torchvision state-dict key, so the reference
checks the Flax models *and* the key table of :mod:`jaxbn.weights.torchvision`.

Building blocks are generic — :class:`Reference` runs conv / BN / linear layers
on named weights, :class:`StateDictBuilder` creates random tensors with given
names and shapes — so other families (e.g. EfficientNet-Lite) can add their
own forward functions and state-dict generators in a separate file.

Usage::

    sd = make_state_dict("resnet50", seed=0)
    logits, stats = forward("resnet50", sd, images_nchw, train=True)
    stats["layer1.0.bn1"].running_var   # torch's updated running variance
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

StateDict = dict[str, torch.Tensor]

# The reference runs tiny batches: with torch's default intra-op pool, thread
# hand-offs (spinning on a busy 2-core CI machine) cost 20-50x the work itself.
torch.set_num_threads(1)

# Architectures, written out independently of jaxbn so the tests are a real check.
RESNETS: dict[str, tuple[tuple[int, ...], bool]] = {  # stage sizes, bottleneck
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
    "resnet152": ((3, 8, 36, 3), True),
}
DENSENETS: dict[str, tuple[int, ...]] = {  # block config; growth 32, bn_size 4, 64 init
    "densenet121": (6, 12, 24, 16),
    "densenet169": (6, 12, 32, 32),
    "densenet201": (6, 12, 48, 32),
}


# --------------------------------------------------------------------------- #
# Generic layers on named weights.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class BNStats:
  """What one BN layer saw in train mode, in torch's conventions."""

  batch_mean: torch.Tensor
  batch_var: torch.Tensor  # biased: what the layer normalises with
  count: int  # elements per channel, N * H * W
  running_mean: torch.Tensor  # updated: (1 - m) * running + m * batch_mean
  running_var: torch.Tensor  # updated with the *unbiased* batch variance


@dataclasses.dataclass
class Reference:
  """Applies ``torch.nn.functional`` layers whose weights are named by state-dict prefix.

  In train mode every BN normalises with batch statistics and records a
  :class:`BNStats` in ``stats`` under its prefix; the state dict is not modified.
  """

  state_dict: Mapping[str, torch.Tensor]
  train: bool = False
  bn_eps: float = 1e-5
  bn_momentum: float = 0.1  # torch convention
  stats: dict[str, BNStats] = dataclasses.field(default_factory=dict)

  def has(self, prefix: str) -> bool:
    return f"{prefix}.weight" in self.state_dict

  def conv(self, x, prefix: str, stride: int = 1, padding: int = 0, groups: int = 1):
    return F.conv2d(
        x, self.state_dict[f"{prefix}.weight"], self.state_dict.get(f"{prefix}.bias"),
        stride=stride, padding=padding, groups=groups,
    )

  def bn(self, x, prefix: str):
    sd = self.state_dict
    weight, bias = sd[f"{prefix}.weight"], sd[f"{prefix}.bias"]
    running_mean = sd[f"{prefix}.running_mean"].clone()
    running_var = sd[f"{prefix}.running_var"].clone()
    if not self.train:
      return F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, self.bn_eps)
    # training=True normalises with the batch statistics and updates the
    # running buffers in place (torch.nn.BatchNorm2d.train() semantics).
    y = F.batch_norm(
        x, running_mean, running_var, weight, bias, True, self.bn_momentum, self.bn_eps
    )
    dims = [d for d in range(x.ndim) if d != 1]
    self.stats[prefix] = BNStats(
        batch_mean=x.mean(dims),
        batch_var=x.var(dims, unbiased=False),
        count=x.numel() // x.shape[1],
        running_mean=running_mean,
        running_var=running_var,
    )
    return y

  def linear(self, x, prefix: str):
    return F.linear(x, self.state_dict[f"{prefix}.weight"], self.state_dict.get(f"{prefix}.bias"))


def global_avg_pool(x):
  return F.adaptive_avg_pool2d(x, 1).flatten(1)


# --------------------------------------------------------------------------- #
# Forward passes.
# --------------------------------------------------------------------------- #


def resnet_forward(ref: Reference, x, stage_sizes: Sequence[int], bottleneck: bool):
  """torchvision ResNet (v1.5) on NCHW ``x``."""
  x = F.relu(ref.bn(ref.conv(x, "conv1", stride=2, padding=3), "bn1"))
  x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
  for stage, num_blocks in enumerate(stage_sizes, 1):
    for index in range(num_blocks):
      p = f"layer{stage}.{index}"
      stride = 2 if stage > 1 and index == 0 else 1
      identity = x
      if bottleneck:
        y = F.relu(ref.bn(ref.conv(x, f"{p}.conv1"), f"{p}.bn1"))
        y = F.relu(ref.bn(ref.conv(y, f"{p}.conv2", stride, 1), f"{p}.bn2"))
        y = ref.bn(ref.conv(y, f"{p}.conv3"), f"{p}.bn3")
      else:
        y = F.relu(ref.bn(ref.conv(x, f"{p}.conv1", stride, 1), f"{p}.bn1"))
        y = ref.bn(ref.conv(y, f"{p}.conv2", 1, 1), f"{p}.bn2")
      if ref.has(f"{p}.downsample.0"):
        identity = ref.bn(ref.conv(x, f"{p}.downsample.0", stride), f"{p}.downsample.1")
      x = F.relu(y + identity)
  return ref.linear(global_avg_pool(x), "fc")


def densenet_forward(ref: Reference, x, block_config: Sequence[int]):
  """torchvision DenseNet-BC on NCHW ``x`` (modern ``norm1``/``conv1`` key names)."""
  x = ref.conv(x, "features.conv0", stride=2, padding=3)
  x = F.relu(ref.bn(x, "features.norm0"))
  x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
  for b, num_layers in enumerate(block_config, 1):
    features = [x]
    for l in range(1, num_layers + 1):
      p = f"features.denseblock{b}.denselayer{l}"
      y = torch.cat(features, 1)
      y = ref.conv(F.relu(ref.bn(y, f"{p}.norm1")), f"{p}.conv1")
      y = ref.conv(F.relu(ref.bn(y, f"{p}.norm2")), f"{p}.conv2", padding=1)
      features.append(y)
    x = torch.cat(features, 1)
    if b < len(block_config):
      p = f"features.transition{b}"
      x = ref.conv(F.relu(ref.bn(x, f"{p}.norm")), f"{p}.conv")
      x = F.avg_pool2d(x, kernel_size=2, stride=2)
  x = F.relu(ref.bn(x, "features.norm5"))
  return ref.linear(global_avg_pool(x), "classifier")


def forward(
    arch: str, state_dict: Mapping[str, torch.Tensor], x, *, train: bool = False
) -> tuple[torch.Tensor, dict[str, BNStats]]:
  """Logits of torchvision ``arch`` on NCHW ``x`` and, in train mode, per-BN stats."""
  ref = Reference(state_dict, train=train)
  with torch.no_grad():
    if arch in RESNETS:
      logits = resnet_forward(ref, x, *RESNETS[arch])
    elif arch in DENSENETS:
      logits = densenet_forward(ref, x, DENSENETS[arch])
    else:
      raise ValueError(f"No torch reference for {arch!r}.")
  return logits, ref.stats


# --------------------------------------------------------------------------- #
# Random state dicts with torchvision's names and shapes.
# --------------------------------------------------------------------------- #


class StateDictBuilder:
  """Random, well-scaled tensors registered under torch names, in creation order.

  BN layers get non-trivial affine parameters and running statistics (and the
  ``num_batches_tracked`` buffer torch saves), so a wrong mapping of any of
  them changes the outputs.
  """

  def __init__(self, seed: int):
    self.gen = torch.Generator().manual_seed(seed)
    self.state_dict: StateDict = {}

  def _randn(self, *shape):
    return torch.randn(*shape, generator=self.gen)

  def _uniform(self, lo, hi, *shape):
    return lo + (hi - lo) * torch.rand(*shape, generator=self.gen)

  def conv(self, prefix: str, out_ch: int, in_ch: int, k: int, bias: bool = False):
    fan_in = in_ch * k * k
    self.state_dict[f"{prefix}.weight"] = self._randn(out_ch, in_ch, k, k) * (2.0 / fan_in) ** 0.5
    if bias:
      self.state_dict[f"{prefix}.bias"] = 0.1 * self._randn(out_ch)

  def bn(self, prefix: str, ch: int, gamma: tuple[float, float] = (0.5, 1.5)):
    self.state_dict[f"{prefix}.weight"] = self._uniform(*gamma, ch)
    self.state_dict[f"{prefix}.bias"] = 0.2 * self._randn(ch)
    self.state_dict[f"{prefix}.running_mean"] = 0.2 * self._randn(ch)
    self.state_dict[f"{prefix}.running_var"] = self._uniform(0.5, 2.0, ch)
    self.state_dict[f"{prefix}.num_batches_tracked"] = torch.randint(
        1, 10_000, (), generator=self.gen, dtype=torch.int64
    )

  def linear(self, prefix: str, out_f: int, in_f: int):
    self.state_dict[f"{prefix}.weight"] = self._randn(out_f, in_f) / in_f**0.5
    self.state_dict[f"{prefix}.bias"] = 0.1 * self._randn(out_f)


# Small scales on the BN closing each residual branch (as in trained ResNets)
# keep the activations, and so the logits, O(1) even through 50 blocks.
RESIDUAL_GAMMA = (0.1, 0.3)


def resnet_state_dict(
    b: StateDictBuilder, stage_sizes: Sequence[int], bottleneck: bool, num_classes: int
) -> None:
  expansion = 4 if bottleneck else 1
  b.conv("conv1", 64, 3, 7)
  b.bn("bn1", 64)
  in_ch = 64
  for stage, (num_blocks, width) in enumerate(zip(stage_sizes, (64, 128, 256, 512)), 1):
    for index in range(num_blocks):
      p = f"layer{stage}.{index}"
      stride = 2 if stage > 1 and index == 0 else 1
      if bottleneck:
        b.conv(f"{p}.conv1", width, in_ch, 1)
        b.bn(f"{p}.bn1", width)
        b.conv(f"{p}.conv2", width, width, 3)
        b.bn(f"{p}.bn2", width)
        b.conv(f"{p}.conv3", width * 4, width, 1)
        b.bn(f"{p}.bn3", width * 4, gamma=RESIDUAL_GAMMA)
      else:
        b.conv(f"{p}.conv1", width, in_ch, 3)
        b.bn(f"{p}.bn1", width)
        b.conv(f"{p}.conv2", width, width, 3)
        b.bn(f"{p}.bn2", width, gamma=RESIDUAL_GAMMA)
      if stride != 1 or in_ch != width * expansion:
        b.conv(f"{p}.downsample.0", width * expansion, in_ch, 1)
        b.bn(f"{p}.downsample.1", width * expansion)
      in_ch = width * expansion
  b.linear("fc", num_classes, in_ch)


def densenet_state_dict(
    b: StateDictBuilder, block_config: Sequence[int], num_classes: int,
    growth: int = 32, bn_size: int = 4, init_features: int = 64,
) -> None:
  b.conv("features.conv0", init_features, 3, 7)
  b.bn("features.norm0", init_features)
  ch = init_features
  for bi, num_layers in enumerate(block_config, 1):
    for l in range(1, num_layers + 1):
      p = f"features.denseblock{bi}.denselayer{l}"
      b.bn(f"{p}.norm1", ch)
      b.conv(f"{p}.conv1", bn_size * growth, ch, 1)
      b.bn(f"{p}.norm2", bn_size * growth)
      b.conv(f"{p}.conv2", growth, bn_size * growth, 3)
      ch += growth
    if bi < len(block_config):
      p = f"features.transition{bi}"
      b.bn(f"{p}.norm", ch)
      b.conv(f"{p}.conv", ch // 2, ch, 1)
      ch //= 2
  b.bn("features.norm5", ch)
  b.linear("classifier", num_classes, ch)


def make_state_dict(arch: str, seed: int = 0, num_classes: int = 1000) -> StateDict:
  """Random weights for torchvision ``arch`` with its real key names and shapes."""
  b = StateDictBuilder(seed)
  if arch in RESNETS:
    resnet_state_dict(b, *RESNETS[arch], num_classes)
  elif arch in DENSENETS:
    densenet_state_dict(b, DENSENETS[arch], num_classes)
  else:
    raise ValueError(f"No torch reference for {arch!r}.")
  return b.state_dict


def to_legacy_densenet_keys(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
  """Renames ``denselayerK.norm1`` → ``denselayerK.norm.1`` (old torchvision files)."""
  pattern = re.compile(r"(denselayer\d+\.(?:norm|conv))([12])\.")
  return {pattern.sub(r"\1.\2.", k): v for k, v in state_dict.items()}


def num_parameters(state_dict: Mapping[str, torch.Tensor | np.ndarray]) -> int:
  """Learnable parameter count, as ``sum(p.numel() for p in model.parameters())``."""
  buffers = ("running_mean", "running_var", "num_batches_tracked")
  return sum(int(np.prod(v.shape)) for k, v in state_dict.items() if not k.endswith(buffers))


def to_numpy(state_dict: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
  """What :func:`jaxbn.weights.convert.load_state_dict` returns for a saved file."""
  return {k: v.numpy() for k, v in state_dict.items()}


def nhwc_to_nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))

