"""A skip that is not on the allow-list fails the run (tests/skip_policy.py); this suite enforces it.

Each case runs pytest on a few small test files in a fresh process, as CI runs the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from skip_policy import ALLOWED_SKIPS, SkipPolicy

TESTS = Path(__file__).resolve().parent

PASSING = "def test_passes():\n    pass\n"
SKIPPING = "import pytest\n\n\ndef test_skipped():\n    pytest.skip('no data here')\n"
SKIPPED_MODULE = "import pytest\n\npytest.skip('not on this machine', allow_module_level=True)\n"
EXPECTED_FAILURE = "import pytest\n\n\n@pytest.mark.xfail(strict=True)\ndef test_xfail():\n    assert False\n"


def _pytest(directory: Path, files: dict[str, str], *options: str) -> subprocess.CompletedProcess:
    for name, text in files.items():
        (directory / name).write_text(text)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options]
    return subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(TESTS)})


def test_unexpected_skips_fail_the_run(tmp_path: Path) -> None:
    result = _pytest(tmp_path, {"test_a.py": PASSING + "\n\n" + SKIPPING,
                                "test_b.py": SKIPPED_MODULE}, "-p", "skip_policy")
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout + result.stderr
    assert "allowed skips: none" in result.stdout.splitlines()
    assert "unexpected skips, which fail the run (2):" in result.stdout
    assert "  test_a.py::test_skipped: no data here" in result.stdout.splitlines()
    assert "  test_b.py: not on this machine" in result.stdout.splitlines()
    assert "1 passed, 2 skipped" in result.stdout


def test_a_run_without_skips_passes_and_prints_the_allow_list(tmp_path: Path) -> None:
    result = _pytest(tmp_path, {"test_a.py": PASSING, "test_x.py": EXPECTED_FAILURE},
                     "-p", "skip_policy")
    assert result.returncode == pytest.ExitCode.OK, result.stdout + result.stderr
    assert "allowed skips: none" in result.stdout.splitlines()
    assert "unexpected skips" not in result.stdout


def test_allowed_skips_pass_and_are_printed(tmp_path: Path) -> None:
    conftest = ("from skip_policy import SkipPolicy\n\n\ndef pytest_configure(config):\n"
                "    allowed = {'test_a.py::test_skipped': 'needs a TPU'}\n"
                "    config.pluginmanager.register(SkipPolicy(allowed), 'skip_policy_check')\n")
    result = _pytest(tmp_path, {"conftest.py": conftest, "test_a.py": PASSING + "\n\n" + SKIPPING})
    assert result.returncode == pytest.ExitCode.OK, result.stdout + result.stderr
    assert "allowed skips:" in result.stdout.splitlines()
    assert "  test_a.py::test_skipped: needs a TPU" in result.stdout.splitlines()
    assert "unexpected skips" not in result.stdout


def test_failures_and_empty_runs_keep_their_exit_codes(tmp_path: Path) -> None:
    failing = "def test_fails():\n    assert False\n"
    result = _pytest(tmp_path, {"test_a.py": failing + "\n\n" + SKIPPING}, "-p", "skip_policy")
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout + result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _pytest(empty, {}, "-p", "skip_policy")
    assert result.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, result.stdout + result.stderr


def test_this_suite_enforces_the_policy(pytestconfig: pytest.Config) -> None:
    plugin = pytestconfig.pluginmanager.get_plugin("skip_policy_check")
    assert isinstance(plugin, SkipPolicy) and plugin.allowed == ALLOWED_SKIPS
