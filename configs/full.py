r"""Standard transfer baseline ``fc_then_full``: head warm-up, then everything at a lower lr.

  python -m jaxbn.main --config=configs/full.py --workdir=/tmp/full
"""

from jaxbn.config import apply_overrides, base_config, stage


def get_config(arg=None):
  c = base_config()
  c.warmup = stage("head", epochs=1, lr=1e-3)
  c.finetune = stage("full", epochs=4, lr=1e-4, schedule="cosine")
  return apply_overrides(c, arg)
