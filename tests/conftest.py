"""Every test runs on 8 simulated CPU devices, so sharding is exercised for real.

The tests start many `llm-jax` processes that compile the same small programs; JAX's
persistent compilation cache, one fresh folder per session shared by every process the
session starts, compiles each of them once."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="llm_jax_xla_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REAL_DATA = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Small excerpts of real data sets, checked in under tests/fixtures (see its README)."""
    return REAL_DATA


def pytest_configure(config: pytest.Config) -> None:
    """Every run fails on a skip that is not allowed (see tests/skip_policy.py)."""
    config.pluginmanager.import_plugin("skip_policy")
