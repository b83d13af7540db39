r"""Transfusion's "slim" variant: ResNet-50 with ImageNet layer1–2, layers 3–4 at half width, random.

The model is built with ``model.stage_widths = (64, 128, 128, 256)`` (3x3-conv
widths of layer1..4; torchvision's are (64, 128, 256, 512)), the stem, layer1 and
layer2 are copied from ImageNet (``transfer_up_to = "stage2"``) and the thinner
layer3, layer4 and the head are randomly initialised (7.1 M instead of 23.5 M
parameters). Training recipe: ``configs/transfusion_random.py`` (EfficientNet-Lite
replaced by ResNet-50; on CPU this is the slowest of the Transfusion configs).

  python -m jaxbn.main --config=configs/transfusion_slim.py --workdir=/tmp/tf_slim
  # other widths: --config.model.stage_widths="(64,128,64,128)"

Not measured yet: it needs the torchvision ResNet-50 ImageNet file (downloaded
on first use). Its initialisation is tested on synthetic weights
(tests/test_transfusion.py).
"""

from jaxbn.config import apply_overrides, base_config, stage
from jaxbn.models.resnet import slim_widths


def get_config(arg=None):
  c = base_config()
  c.model.arch = "resnet50"
  c.model.init = "imagenet"
  c.model.transfer_up_to = "stage2"
  c.model.stage_widths = slim_widths("resnet50")  # (64, 128, 128, 256)
  # -- the recipe of configs/transfusion_random.py (kept identical) --
  c.data.image_size = 48
  c.warmup = stage("head", epochs=0, lr=1e-3)
  c.finetune = stage("full", epochs=3, lr=1e-3, schedule="cosine")
  c.bn_stats = "batch"
  c.bn_momentum = 0.9
  c.eval_every_steps = 10
  c.target_auc = 0.95
  return apply_overrides(c, arg)
