r"""Transfusion's weight transfusion: pretrained weights up to a cut, random after it.

``model.transfer_up_to`` (default ``all``: every pretrained module but the head,
i.e. ordinary transfer learning with a random head) copies the ImageNet weights
of a contiguous prefix (all collections: kernels, BN γ/β and running statistics)
and keeps the random initialisation for the rest (:func:`jaxbn.weights.init.transfuse`):

  none     nothing (= configs/transfusion_random.py)
  conv1    the stem (ResNet conv1+bn1, EfficientNet-Lite conv_stem+bn0, DenseNet conv0+norm0)
  stageK   the stem + stages 1..K (ResNet layer1..layerK: K = 1, 2, 3;
           EfficientNet-Lite MBConv stages: K = 1 … 6; DenseNet: K = 1, 2, 3)
  all      everything but the head

  python -m jaxbn.main --config=configs/transfusion_transfer.py --workdir=/tmp/tf_all
  python -m jaxbn.main --config=configs/transfusion_transfer.py:model.transfer_up_to=conv1 \
      --workdir=/tmp/tf_conv1
  python -m jaxbn.main --config=configs/transfusion_transfer.py --workdir=/tmp/tf_r50_s2 \
      --config.model.arch=resnet50 --config.model.transfer_up_to=stage2

``model.init`` may be a checkpoint path instead of ``imagenet``. Training recipe:
``configs/transfusion_random.py``.

Measured (docs/transfusion/convergence.md, 2-core x86-64 CPU, no GPU):
``transfer_up_to=all`` reached val AUC ≥ 0.95 after 20 steps, test AUC 0.965,
1,067 s; ``transfer_up_to=conv1`` after 80 steps, test AUC 0.937, 873 s.
"""

from jaxbn.config import apply_overrides, base_config, stage


def get_config(arg=None):
  c = base_config()
  c.model.arch = "efficientnet_lite0"
  c.model.init = "imagenet"
  c.model.transfer_up_to = "all"
  # -- the recipe of configs/transfusion_random.py (kept identical) --
  c.data.image_size = 48
  c.warmup = stage("head", epochs=0, lr=1e-3)
  c.finetune = stage("full", epochs=3, lr=1e-3, schedule="cosine")
  c.bn_stats = "batch"
  c.bn_momentum = 0.9
  c.eval_every_steps = 10
  c.target_auc = 0.95
  return apply_overrides(c, arg)
