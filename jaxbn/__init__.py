"""jaxbn: parameter-efficient transfer learning for medical images in JAX/Flax.

Public entry points:
  * ``jaxbn.models.create_model`` — Flax ResNets, DenseNets, EfficientNet-Lites.
  * ``jaxbn.weights`` — torchvision / EfficientNet-Lite checkpoint conversion and cache.
  * ``jaxbn.masks`` — optax label trees that train only BN scale/bias (and friends).
"""

__version__ = "0.1.0"
