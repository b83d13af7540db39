"""Test set-up: 8 fake CPU devices (before JAX starts), TF kept off accelerators."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAXBN_OFFLINE", "1")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pathlib  # noqa: E402

import pytest  # noqa: E402

# CC0 photos shipped inside scikit-image (a test dependency): chelsea (a tabby cat,
# ImageNet classes 281/282/285), coffee (an espresso, 967), astronaut, rocket.
PHOTOS = pathlib.Path(__import__("skimage.data", fromlist=["data"]).__file__).parent


@pytest.fixture(scope="session")
def photos() -> pathlib.Path:
  """Folder holding scikit-image's sample photos (``chelsea.png``, ``coffee.png``, ...)."""
  return PHOTOS
