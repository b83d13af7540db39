r"""Transfusion's Mean-Var initialisation (``model.init = "mean_var"``).

Each conv kernel is drawn iid from N(mean, var) of the matching ImageNet kernel
(one scalar pair per tensor), every BN layer is identity, the head is random
(:func:`jaxbn.weights.init.mean_var`). ``mean_var:/path/to.pth`` takes the
statistics from another checkpoint. Training recipe: ``configs/transfusion_random.py``.

  python -m jaxbn.main --config=configs/transfusion_mean_var.py --workdir=/tmp/tf_mean_var

Measured (docs/transfusion/convergence.md): val AUC ≥ 0.95 after 60 steps,
test AUC 0.940, 1,224 s on a 2-core x86-64 CPU, no GPU.
"""

from jaxbn.config import apply_overrides, base_config, stage


def get_config(arg=None):
  c = base_config()
  c.model.arch = "efficientnet_lite0"
  c.model.init = "mean_var"
  # -- the recipe of configs/transfusion_random.py (kept identical) --
  c.data.image_size = 48
  c.warmup = stage("head", epochs=0, lr=1e-3)
  c.finetune = stage("full", epochs=3, lr=1e-3, schedule="cosine")
  c.bn_stats = "batch"
  c.bn_momentum = 0.9
  c.eval_every_steps = 10
  c.target_auc = 0.95
  return apply_overrides(c, arg)
