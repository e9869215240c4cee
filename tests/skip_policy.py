"""A pytest plugin that fails the run on any skip not on `ALLOWED_SKIPS`, and prints that list.

A skipped test is a feature nobody tested, and a run that reports it among passes looks green:
so the suite passes only when nothing skips but what is listed here, each with its reason.
Skips at collection (a module-level `pytest.skip`, `importorskip`) count as well; expected
failures (xfail) are not skips. `tests/conftest.py` loads it for every run; `-p skip_policy`
(with tests/ on the path) loads it anywhere else.
"""

from __future__ import annotations

from typing import Mapping

import pytest

# test node id (as pytest prints it, from the repository root) -> why it may skip
ALLOWED_SKIPS: dict[str, str] = {}


def _reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: why")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


class SkipPolicy:
    """Records skips as they are reported and fails a run that had an unexpected one."""

    def __init__(self, allowed: Mapping[str, str]) -> None:
        self.allowed = dict(allowed)
        self.unexpected: list[tuple[str, str]] = []

    def _record(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if report.nodeid not in self.allowed:
            self.unexpected.append((report.nodeid, _reason(report)))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped:
            self._record(report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self._record(report)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.allowed:
            terminalreporter.write_line("allowed skips:")
            for nodeid, why in self.allowed.items():
                terminalreporter.write_line(f"  {nodeid}: {why}")
        else:
            terminalreporter.write_line("allowed skips: none")
        if self.unexpected:
            terminalreporter.write_line(
                f"unexpected skips, which fail the run ({len(self.unexpected)}):", red=True)
            for nodeid, why in self.unexpected:
                terminalreporter.write_line(f"  {nodeid}: {why}", red=True)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.unexpected and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipPolicy(ALLOWED_SKIPS), "skip_policy_check")
