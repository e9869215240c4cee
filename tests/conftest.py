"""Every test runs on 8 simulated CPU devices, so sharding is exercised for real."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
