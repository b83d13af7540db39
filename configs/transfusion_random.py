r"""Transfusion (Raghu et al., 2019): train from a random initialisation (the baseline).

Every ``configs/transfusion_*.py`` shares this training recipe and differs only in
the initialisation, so steps to ``target_auc`` and final AUC compare initialisers:
full fine-tuning from step 0 (no head warm-up), Adam 1e-3 with cosine decay,
batch BN statistics (a Mean-Var or random network has identity BN statistics to
start from, so frozen ones would never normalise), Flax BN momentum 0.9 (the
running statistics catch up within a short run), validation every 10 steps.
Defaults: EfficientNet-Lite0, PneumoniaMNIST (shipped, offline) at 48 px,
3 epochs (219 steps) — a CPU budget; the paper trained ResNet-50 at 224 px to
convergence (``--config.data.image_size=224 --config.finetune.epochs=...``).

  python -m jaxbn.main --config=configs/transfusion_random.py --workdir=/tmp/tf_random
  python -m jaxbn.main --config=configs/transfusion_random.py:model.arch=cbr_small --workdir=...

results.json: ``steps_to_target`` / ``wall_to_target_s`` (first validation with
AUC ≥ ``target_auc``), ``test_auc`` of the best-validation checkpoint, ``history``.

Measured (docs/transfusion/convergence.md, the first command): val AUC ≥ 0.95
after 70 steps, test AUC 0.932, 1,044 s on a 2-core x86-64 CPU, no GPU.
"""

from jaxbn.config import apply_overrides, base_config, stage


def get_config(arg=None):
  c = base_config()
  c.model.arch = "efficientnet_lite0"
  c.model.init = "random"
  # -- the recipe shared by configs/transfusion_*.py (keep them identical) --
  c.data.image_size = 48
  c.warmup = stage("head", epochs=0, lr=1e-3)  # skipped: full fine-tuning from step 0
  c.finetune = stage("full", epochs=3, lr=1e-3, schedule="cosine")
  c.bn_stats = "batch"
  c.bn_momentum = 0.9
  c.eval_every_steps = 10
  c.target_auc = 0.95
  return apply_overrides(c, arg)
