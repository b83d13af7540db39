"""PyTorch peers of jaxbn's benchmark: the same networks in ``torch.nn``, same weights.

``python -m jaxbn.bench --peers=torch`` times, in the same process and
interleaved with jaxbn's steps, what a PyTorch user would write for the same
fine-tuning: the architecture as ``torch.nn`` modules (torchvision's ResNet and
``EfficientNet-Lite-PyTorch``'s EfficientNet-Lite, written out here because
torchvision is not a dependency), the same variables (loaded from the jaxbn
tree through jaxbn's own torch-key tables), ``requires_grad_(False)`` on the
frozen parameters, BatchNorm in ``eval()`` mode when statistics are frozen,
``channels_last`` memory format, ``torch.optim.Adam`` over the trainable
parameters only, and softmax cross-entropy. On a GPU it runs on CUDA with
``cudnn.benchmark``; jaxbn's ``--dtype=bfloat16`` (bf16 compute, float32
parameters) is ``torch.autocast(dtype=torch.bfloat16)`` there.

torch is imported by this module only; jaxbn itself never needs it.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jaxbn import masks


def peer_device(jax_platform: str) -> str:
  """The torch device that matches jaxbn's: ``'cuda'`` beside a JAX GPU, else ``'cpu'``."""
  if jax_platform == "gpu" and torch.cuda.is_available():
    torch.backends.cudnn.benchmark = True  # fixed shapes: what a PyTorch user turns on
    return "cuda"
  return "cpu"


def use_threads_like_xla() -> int:
  """torch intra-op threads = the CPUs this process may run on (what XLA's pool uses)."""
  import os

  n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  torch.set_num_threads(n)
  return n

RESNETS: dict[str, tuple[tuple[int, ...], bool]] = {  # blocks per stage, bottleneck
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
    "resnet152": ((3, 8, 36, 3), True),
}


# --------------------------------------------------------------------------- #
# ResNet (torchvision's module names: conv1, bn1, layer1.0.conv1, ..., fc).
# --------------------------------------------------------------------------- #


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin: int, width: int, stride: int, project: bool):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.downsample = (nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False),
                                     nn.BatchNorm2d(width)) if project else None)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin: int, width: int, stride: int, project: bool):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)  # v1.5: stride in the 3x3
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(width * 4)
    self.downsample = (nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride, bias=False),
                                     nn.BatchNorm2d(width * 4)) if project else None)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class ResNet(nn.Module):
  def __init__(self, stage_sizes: Sequence[int], bottleneck: bool, num_classes: int):
    super().__init__()
    block = Bottleneck if bottleneck else BasicBlock
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    cin = 64
    for stage, n in enumerate(stage_sizes, 1):
      width = 64 * 2 ** (stage - 1)
      layers = []
      for i in range(n):
        stride = 2 if i == 0 and stage > 1 else 1
        project = i == 0 and (stage > 1 or bottleneck)
        layers.append(block(cin, width, stride, project))
        cin = width * block.expansion
      setattr(self, f"layer{stage}", nn.Sequential(*layers))
    self.num_stages = len(stage_sizes)
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
    for stage in range(1, self.num_stages + 1):
      x = getattr(self, f"layer{stage}")(x)
    return self.fc(x.mean((2, 3)))


# --------------------------------------------------------------------------- #
# EfficientNet-Lite (EfficientNet-Lite-PyTorch's names: _conv_stem, _blocks.i, _fc).
# --------------------------------------------------------------------------- #


class Conv2dSame(nn.Conv2d):
  """TensorFlow 'SAME' padding (extra pixel at the bottom/right), as the checkpoints'."""

  def forward(self, x):
    pads = []
    for size, k, s in ((x.shape[3], self.kernel_size[1], self.stride[1]),
                       (x.shape[2], self.kernel_size[0], self.stride[0])):
      total = max((math.ceil(size / s) - 1) * s + k - size, 0)
      pads += [total // 2, total - total // 2]
    if any(pads):
      x = F.pad(x, pads)
    return super().forward(x)


def _bn(c: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
  def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int):
    super().__init__()
    hidden = cin * expand
    if expand != 1:
      self._expand_conv = nn.Conv2d(cin, hidden, 1, bias=False)
      self._bn0 = _bn(hidden)
    self._depthwise_conv = Conv2dSame(hidden, hidden, k, stride, groups=hidden, bias=False)
    self._bn1 = _bn(hidden)
    self._project_conv = nn.Conv2d(hidden, cout, 1, bias=False)
    self._bn2 = _bn(cout)
    self.expand, self.residual = expand != 1, stride == 1 and cin == cout

  def forward(self, x):
    y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
    y = F.relu6(self._bn1(self._depthwise_conv(y)))
    y = self._bn2(self._project_conv(y))
    return y + x if self.residual else y


class EfficientNetLite(nn.Module):
  def __init__(self, arch: str, num_classes: int):
    super().__init__()
    from jaxbn.models import efficientnet_lite as lite

    width, depth, _, _ = lite.VARIANTS[arch]
    self._conv_stem = Conv2dSame(3, lite.STEM_FEATURES, 3, 2, bias=False)
    self._bn0 = _bn(lite.STEM_FEATURES)
    self._blocks = nn.ModuleList(
        MBConv(c.in_features, c.out_features, c.expand_ratio, c.kernel_size, c.stride)
        for c in lite.block_configs(width, depth))
    last = self._blocks[-1]._project_conv.out_channels
    self._conv_head = nn.Conv2d(last, lite.HEAD_FEATURES, 1, bias=False)
    self._bn1 = _bn(lite.HEAD_FEATURES)
    self._fc = nn.Linear(lite.HEAD_FEATURES, num_classes)

  def forward(self, x):
    x = F.relu6(self._bn0(self._conv_stem(x)))
    for block in self._blocks:
      x = block(x)
    x = F.relu6(self._bn1(self._conv_head(x)))
    return self._fc(x.mean((2, 3)))


ARCHS = (*RESNETS, "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
         "efficientnet_lite3", "efficientnet_lite4")


def create_model(arch: str, num_classes: int) -> nn.Module:
  if arch in RESNETS:
    return ResNet(*RESNETS[arch], num_classes=num_classes)
  if arch.startswith("efficientnet_lite"):
    return EfficientNetLite(arch, num_classes)
  raise ValueError(f"No PyTorch peer for {arch!r}; peers: {', '.join(ARCHS)}.")


# --------------------------------------------------------------------------- #
# jaxbn variables → torch state dict, labels → requires_grad.
# --------------------------------------------------------------------------- #


def _get(tree: Mapping[str, Any], path: Sequence[str]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _to_torch(value: Any, path: Sequence[str]) -> torch.Tensor:
  value = np.asarray(value, np.float32)
  if path[-1] == "kernel" and value.ndim == 4:
    value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW (depthwise (k,k,1,C) -> (C,1,k,k))
  elif path[-1] == "kernel" and value.ndim == 2:
    value = value.T  # (in, out) -> (out, in)
  return torch.from_numpy(np.array(value, np.float32, order="C"))  # a writable copy


def state_dict_of(arch: str, variables: Mapping[str, Any]) -> dict[str, torch.Tensor]:
  """The jaxbn variables as the peer's state dict (jaxbn.weights' key tables, inverted)."""
  from jaxbn.weights import convert

  return {k: _to_torch(_get(variables, path), path)
          for k, path in convert.key_table(arch).items()}


def torch_labels(arch: str, labels: Any) -> dict[str, str]:
  """torch parameter name → jaxbn mask label (``'trainable'`` / ``'frozen'``)."""
  from jaxbn.weights import convert

  return {k: _get(labels, path[1:]) for k, path in convert.key_table(arch).items()
          if path[0] == "params"}


def build_peer(arch: str, variables: Mapping[str, Any], labels: Any, *, bn_stats: str = "frozen",
               lr: float = 1e-4, channels_last: bool = True, device: str = "cpu"):
  """``(model, optimizer)``: the peer with jaxbn's weights, frozen leaves frozen, on ``device``."""
  num_classes = np.shape(_get(variables, ("params",) + _head_path(arch)))[-1]
  model = create_model(arch, num_classes)
  missing, unexpected = model.load_state_dict(state_dict_of(arch, variables), strict=False)
  missing = [k for k in missing if not k.endswith("num_batches_tracked")]
  if missing or unexpected:
    raise ValueError(f"Peer {arch}: missing {missing[:5]}, unexpected {unexpected[:5]}.")
  trainable = torch_labels(arch, labels)
  for name, p in model.named_parameters():
    p.requires_grad_(trainable[name] == masks.TRAINABLE)
  model.train()
  if bn_stats == "frozen":  # running statistics, never updated (jaxbn's use_running_average)
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.eval()
  model = model.to(device, memory_format=torch.channels_last if channels_last else None)
  opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
  return model, opt


def _head_path(arch: str) -> tuple[str, ...]:
  return ("fc", "kernel")


def to_input(images_nhwc: Any, channels_last: bool = True, device: str = "cpu") -> torch.Tensor:
  """NHWC numpy images → NCHW tensor (channels_last memory: the same bytes as NHWC)."""
  x = torch.from_numpy(np.array(images_nhwc, np.float32, order="C")).to(device)
  x = x.permute(0, 3, 1, 2)
  return x if channels_last else x.contiguous()


def loss_of(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
  return F.cross_entropy(model(images), labels)


def make_step(model: nn.Module, opt: torch.optim.Optimizer, images: torch.Tensor,
              labels: torch.Tensor, autocast: torch.dtype | None = None):
  """A zero-argument train step (forward, backward, Adam) returning the (detached) loss tensor.

  ``autocast``: a dtype to compute the forward pass in (``torch.autocast`` on the
  images' device; parameters and optimizer stay float32), e.g. ``torch.bfloat16``.
  """
  device_type = images.device.type

  def step():
    opt.zero_grad(set_to_none=True)
    with (torch.autocast(device_type, dtype=autocast) if autocast is not None
          else contextlib.nullcontext()):
      loss = loss_of(model, images, labels)
    loss.backward()
    opt.step()
    return loss.detach()

  return step
