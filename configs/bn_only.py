r"""BN-only fine-tuning — the partial-transfusion paper's proposed ``fc_then_bn``.

Stage 1 trains the new head alone for exactly one epoch (lr 1e-3); stage 2 trains
the BN scale/bias (γ, β) plus the head (lr 1e-3). BN statistics stay frozen
(inference mode). Defaults: EfficientNet-Lite0 ImageNet weights, PneumoniaMNIST
(shipped with jaxbn, runs offline).

  python -m jaxbn.main --config=configs/bn_only.py --workdir=/tmp/bn_only
  python -m jaxbn.main --config=configs/bn_only.py:model.arch=resnet50 --workdir=...

Measured (docs/results/bn_only_default.md, the first command): test AUC 0.963,
ACC 0.901, best validation AUC 0.988 at step 219 of 365; 811 s of training and
evaluation, 2.35 GiB peak memory, on a 2-core x86-64 CPU, no GPU.
"""

from jaxbn.config import apply_overrides, base_config, stage


def get_config(arg=None):
  c = base_config()
  c.warmup = stage("head", epochs=1, lr=1e-3)
  c.finetune = stage("bn+head", epochs=4, lr=1e-3, schedule="cosine")
  return apply_overrides(c, arg)
