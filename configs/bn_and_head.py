r"""One-stage BN γ,β + head fine-tuning from step 0 (the paper's ``bn_and_fc``).

BN scale/bias and the new head train together for five epochs (Adam 1e-3,
cosine decay), BN statistics frozen; no head warm-up.

  python -m jaxbn.main --config=configs/bn_and_head.py --workdir=/tmp/bn_and_head

Not measured with this exact config. The partial-transfusion sweep's
``bn_and_fc`` mode (32 px, 2 epochs) gave test AUC 0.964 on PneumoniaMNIST
(docs/results/report.md).
"""

from jaxbn.config import apply_overrides, base_config, stage


def get_config(arg=None):
  c = base_config()
  c.warmup = stage("head", epochs=0, lr=1e-3)
  c.finetune = stage("bn+head", epochs=5, lr=1e-3, schedule="cosine")
  return apply_overrides(c, arg)
