"""The README's commands are the ones CI runs, and its test command fails fast on a hang."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HANGING = """import threading


def _waits_forever(event):
    event.wait()


def test_hangs():
    event = threading.Event()
    threading.Thread(target=_waits_forever, args=(event,), name="helper", daemon=True).start()
    event.wait()


def test_after_the_hang():
    pass
"""


def _readme_test_command() -> str:
    readme_block = ROOT.joinpath("README.md").read_text().split("```bash\n", 1)[1].split("```")[0]
    return readme_block.strip().splitlines()[1]


def test_ci_runs_the_readme_test_command():
    test_command = _readme_test_command()
    assert "pytest" in test_command
    assert test_command in ROOT.joinpath(".ci", "run").read_text().splitlines()


def test_a_hung_test_ends_the_run_with_every_threads_stack(tmp_path: Path):
    """The README command's pytest options, with its per-test limit cut to 2 s, on a test that
    never ends: the run stops at once with a failure and the stacks of both threads."""
    words = shlex.split(_readme_test_command())
    options = [w for w in words[words.index("pytest") + 1:] if w.startswith("-")]
    assert any(re.fullmatch(r"--timeout=\d+", w) for w in options), options
    options = ["--timeout=2" if w.startswith("--timeout=") else w for w in options]
    tmp_path.joinpath("test_hang.py").write_text(HANGING)
    result = subprocess.run([sys.executable, "-m", "pytest", *options, "-p", "no:cacheprovider",
                             "test_hang.py"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Timeout" in output and "in _waits_forever" in output and "in test_hangs" in output
    assert "test_after_the_hang" not in output and "passed" not in output
