r"""AC-Corr transferability ranking of candidate pretrained models (AC-Norm, arXiv:2307.15282).

  python -m jaxbn.main --config=configs/transferability.py --workdir=/tmp/acc \
      --config.data.name=retinamnist --config.data.data_dir=/path/to/medmnist
  # with the validation (fine-tune every candidate, Kendall τ vs validation AUC):
  python -m jaxbn.main --config=configs/transferability.py --workdir=/tmp/acc \
      --config.transfer.validate=True --config.transfer.validate_steps=100

Writes WORKDIR/transferability.{md,json} and transferability_layers.png; see jaxbn/analysis/transferability.py.
The validation fine-tunes with this config's training fields (those of
configs/acnorm.py: AC-Norm + full fine-tuning), capped at ``validate_steps``.

Measured: the ranking and its validation on RetinaMNIST and PneumoniaMNIST are in
docs/acnorm/transferability.md and docs/acnorm/transferability_pneumoniamnist.md
(2-core x86-64 CPU, no GPU). The random-init control scores 428.73 and
fine-tunes worst; the ImageNet EfficientNet-Lites score 4.7-4.9.
"""

import ml_collections

from jaxbn.config import apply_overrides, base_config, stage


def get_config(arg=None):
  c = base_config()
  c.task = "transferability"
  c.model.norm = "acnorm"
  c.bn_stats = "batch"
  c.warmup = stage("head", epochs=1, lr=1e-3)
  c.finetune = stage("full", epochs=4, lr=1e-4, schedule="cosine")

  c.transfer = ml_collections.ConfigDict()
  # "arch@init" items separated by ';' (',' too with --config.transfer.candidates=...);
  # init: imagenet | random (a control) | a checkpoint path. Architectures may differ.
  c.transfer.candidates = (
      "efficientnet_lite0@imagenet;efficientnet_lite1@imagenet;"
      "efficientnet_lite2@imagenet;efficientnet_lite0@random"
  )
  c.transfer.steps = 1  # AC-Norm fine-tuning steps before S is read (the abstract: one)
  c.transfer.strategy = "full"  # jaxbn.masks strategy of those steps
  c.transfer.lr = 1e-3  # Adam (config.optimizer) learning rate of those steps
  c.transfer.batch_size = 0  # 0 = config.batch_size
  c.transfer.head_init = "random"  # random | zero (a zero head gives the backbone no gradient)
  c.transfer.temperature = 1.0  # τ of S
  c.transfer.layers = ""  # regex over '/'-joined AC-Norm module paths; "" = all of them
  c.transfer.validate = False  # also fine-tune each candidate and report Kendall τ
  c.transfer.validate_steps = 0  # cap on each validation run's steps (0 = the stages' length)
  c.transfer.validate_norm = ""  # norm of the validation runs ("" = model.norm)
  return apply_overrides(c, arg)
