r"""Linear probe (the paper's ``fc``): only the new head trains; the backbone is frozen.

Five epochs, Adam 1e-3, cosine decay, BN statistics frozen.

  python -m jaxbn.main --config=configs/linear_probe.py --workdir=/tmp/linear_probe

Not measured with this exact config. The partial-transfusion sweep's ``fc``
mode (32 px, 2 epochs) gave test AUC 0.916 on PneumoniaMNIST
(docs/results/report.md).
"""

from jaxbn.config import apply_overrides, base_config, stage


def get_config(arg=None):
  c = base_config()
  c.warmup = stage("head", epochs=0, lr=1e-3)
  c.finetune = stage("head", epochs=5, lr=1e-3, schedule="cosine")
  return apply_overrides(c, arg)
