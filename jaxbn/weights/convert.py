"""The old name of :mod:`jaxbn.weights.pytorch` (PyTorch checkpoints → Flax variables).

Renamed so that one module is called ``convert``: the command line,
``python -m jaxbn.convert`` / ``jaxbn convert``. ``import jaxbn.weights.convert``
keeps working and gives the very same module object (so monkeypatching either
name patches both).
"""

import sys

from jaxbn.weights import pytorch

sys.modules[__name__] = pytorch
