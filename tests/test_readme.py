"""The README's commands are the ones CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme_block = ROOT.joinpath("README.md").read_text().split("```bash\n", 1)[1].split("```")[0]
    test_command = readme_block.strip().splitlines()[1]
    assert "pytest" in test_command
    assert test_command in ROOT.joinpath(".ci", "run").read_text().splitlines()
