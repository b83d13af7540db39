r"""AC-Norm + BN-only fine-tuning: only the AC-Norm target affines (γ_t, β_t) and the head train.

``configs/bn_only.py``'s schedule (head 1 epoch, then BN γ,β + head 4 epochs, Adam
1e-3, cosine) with AC-Norm layers. The target affine is ``scale``/``bias`` in
``params``, so the ``bn+head`` strategy selects exactly it; the source affine is
not a parameter. Batch statistics as in AC-Norm's reference (``:bn_stats=frozen``
gives the partial-transfusion paper's frozen statistics instead).

  python -m jaxbn.main --config=configs/acnorm_bn_only.py --workdir=/tmp/acnorm_bn_only

Measured: this recipe is the ``acnorm_bn_only`` mode of configs/sweeps/acnorm.py.
On RetinaMNIST at 64 px it gave test AUC 0.677 ± 0.012 (3 seeds), 134 s a run on
a 2-core x86-64 CPU, no GPU (docs/acnorm/sweep/report.md).
"""

from jaxbn.config import apply_overrides, base_config, stage


def get_config(arg=None):
  c = base_config()
  c.model.norm = "acnorm"
  c.bn_stats = "batch"
  c.warmup = stage("head", epochs=1, lr=1e-3)
  c.finetune = stage("bn+head", epochs=4, lr=1e-3, schedule="cosine")
  return apply_overrides(c, arg)
