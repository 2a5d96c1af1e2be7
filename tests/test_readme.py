"""The README's two commands work as written: CI runs its test command, and its main job runs."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    """The one-line commands of the README's bash blocks."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def main_job_command() -> str:
    return next(c for c in readme_commands() if c.endswith("kbert demo"))


def test_ci_runs_the_readme_test_command_exactly():
    setup_and_test = next(c for c in readme_commands() if "pytest" in c and "venv" in c)
    test_command = setup_and_test.split("&&")[-1].strip()
    assert test_command == "python -m pytest tests"
    ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert test_command in ci_lines


def ci_commands() -> list[str]:
    """The install, lint and test commands of .ci/run, as a person types them."""
    commands = []
    for line in (ROOT / ".ci/run").read_text().splitlines():
        line = line.strip()
        if line.startswith("python -m pip install") and "--upgrade pip" not in line:
            commands.append(line.replace("python -m pip install --quiet", "pip install"))
        elif line.startswith(("ruff ", "python -m pytest")):
            commands.append(line)
    return commands


def test_readme_shows_every_install_lint_and_test_command_ci_runs():
    commands = ci_commands()
    assert any(c.startswith("pip install") for c in commands), commands
    readme = set()
    for command in readme_commands():
        readme.update(part.strip() for part in command.split("&&"))
    missing = [c for c in commands if c not in readme]
    assert not missing, f"commands .ci/run runs that the README does not show: {missing}"


def copy_checkout(destination: Path) -> None:
    """The committed tree, as a fresh clone would have it."""
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)


def run_in_fresh_checkout(
    command: str, tmp_path: Path, timeout: int
) -> subprocess.CompletedProcess:
    checkout = tmp_path / "kbert"
    copy_checkout(checkout)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p and "venv/bin" not in p
    )
    return subprocess.run(
        ["bash", "-c", command],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_readme_main_job_sets_up_a_fresh_venv_and_runs_the_demo(tmp_path):
    # The README's command as written, at the demo's --quick size so the suite stays short
    # (the full-size run is `test_readme_main_job_literally`, marked slow).
    command = main_job_command() + " --quick"
    done = run_in_fresh_checkout(command, tmp_path, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "held-out results" in done.stdout
    assert (tmp_path / "kbert/saved_models/kbert-demo/1/saved_model.pb").exists()


@pytest.mark.slow
def test_readme_main_job_literally(tmp_path):
    done = run_in_fresh_checkout(main_job_command(), tmp_path, timeout=3600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "held-out results" in done.stdout
