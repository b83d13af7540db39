"""Pure, jitted array operations (no Flax state): building blocks of jaxbn's layers."""

from jaxbn.ops.acnorm import acnorm_affine

__all__ = ["acnorm_affine"]
