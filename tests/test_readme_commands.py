"""The README's two leading commands are the ones CI and a newcomer run."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quick start"):text.index("\n## ", text.index("## Quick start") + 1)]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_readme_leads_with_setup_and_demo_then_tests():
    setup_and_demo, tests = quick_start_commands()
    assert "python3 -m venv .venv" in setup_and_demo and "erasure_core demo" in setup_and_demo
    assert "pytest" in tests


def test_ci_runs_the_readmes_test_command_verbatim():
    _, tests = quick_start_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines(), "the README's test command must be a line of .ci/run"
    # and CI sets up the environment the README's first command makes
    assert "torch==2.14.1 torchvision==0.29.1" in ci and '-e ".[test]"' in ci
