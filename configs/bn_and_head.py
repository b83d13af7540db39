r"""One-stage BN γ,β + head fine-tuning from step 0 (the paper's ``bn_and_fc``).

  python -m jaxbn.main --config=configs/bn_and_head.py --workdir=/tmp/bn_and_head
"""

from jaxbn.config import apply_overrides, base_config, stage


def get_config(arg=None):
  c = base_config()
  c.warmup = stage("head", epochs=0, lr=1e-3)
  c.finetune = stage("bn+head", epochs=5, lr=1e-3, schedule="cosine")
  return apply_overrides(c, arg)
