"""The project's default XLA options go into XLA_FLAGS; a user's own value wins."""

import os

from llm_jax import xla_flags


def test_defaults_are_added_to_existing_flags(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    xla_flags.apply_defaults()
    flags = os.environ["XLA_FLAGS"].split()
    assert flags[0] == "--xla_force_host_platform_device_count=8"
    assert "--xla_cpu_experimental_ynn_fusion_type=" in flags


def test_a_flag_the_user_set_is_kept(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
    xla_flags.apply_defaults()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"
