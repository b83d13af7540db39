"""Test set-up: 8 fake CPU devices (before JAX starts), TF kept off accelerators."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAXBN_OFFLINE", "1")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
  if not SHARED.is_dir():
    pytest.fail(f"../shared not found at {SHARED}; tests expect it beside the repo.")
  return SHARED
