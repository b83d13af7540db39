"""Pure, jitted array operations (no Flax state): building blocks of jaxbn's layers."""

from jaxbn.ops.acnorm import ac_corr, acnorm_affine

__all__ = ["ac_corr", "acnorm_affine"]
