r"""TruncatedTL: fine-tune the bottom of an ImageNet backbone, cut at one point.

Keeps the backbone up to ``model.truncate_at`` (the valid cuts of an
architecture: ``jaxbn.models.cut_points(arch)``), drops the rest, puts global
average pooling + a new dense head on top and fine-tunes everything kept
(Peng et al., 2021: all kept weights train). Stage 1 warms the new head up for
one epoch, stage 2 trains the whole truncated network.

  python -m jaxbn.main --config=configs/truncated.py --workdir=/tmp/ttl_stage5
  python -m jaxbn.main --config=configs/truncated.py:model.arch=resnet50,model.truncate_at=layer3_3 \
      --workdir=/tmp/ttl_r50      # the paper's "layer3[3]" cut (torchvision weights)

Truncation composes with every strategy and norm, e.g.
``--config.finetune.strategy=bn+head`` (BN-only on the truncated network) or
``--config.model.norm=acnorm``. To choose the cut, see configs/truncated_search.py.

Not measured with this exact config (docs/truncated.md).
"""

from jaxbn.config import apply_overrides, base_config, stage


def get_config(arg=None):
  c = base_config()
  c.model.arch = "efficientnet_lite0"
  c.model.truncate_at = "stage5"
  c.warmup = stage("head", epochs=1, lr=1e-3)
  c.finetune = stage("full", epochs=4, lr=1e-4, schedule="cosine")
  return apply_overrides(c, arg)
