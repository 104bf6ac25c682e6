"""A plain ``pip install`` (not editable) works as a user gets it: the wheel carries the recipes and accelerate
configs, installs with the locked versions into a fresh venv, and runs the tiny recipe from a folder outside the
repository. Also: the lock says when it is out of date with pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(command: list, cwd: Path | None = None, env: dict | None = None, timeout: int = 1200):
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def outside_env(tmp_path: Path) -> dict:
    """The environment of a user's shell: nothing points at this checkout, models cache in a fresh folder."""
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "RLHF_TRL_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy of the sources: an in-tree build would leave build/ here, and reuse a stale one from before.
    source = tmp_path_factory.mktemp("source") / "rlhf-trl"
    skipped = shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "outputs", "*.egg-info", "__pycache__", ".*cache"
    )
    shutil.copytree(ROOT, source, symlinks=True, ignore=skipped)
    folder = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", folder, source])
    (built,) = folder.glob("rlhf_trl-*.whl")
    return built


def test_wheel_carries_recipes_and_accelerate_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = [path.relative_to(ROOT).as_posix() for path in (ROOT / "rlhf_trl" / "recipes").glob("*/*.yaml")]
    shipped += [path.relative_to(ROOT).as_posix() for path in (ROOT / "rlhf_trl" / "accelerate_configs").iterdir()]
    assert "rlhf_trl/recipes/tiny/sft.yaml" in shipped and "rlhf_trl/accelerate_configs/zero2.yaml" in shipped
    assert sorted(set(shipped) - names) == []


@pytest.mark.slow
def test_wheel_in_fresh_venv_runs_tiny_step_1_outside_the_repo(wheel, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    env = outside_env(tmp_path)
    lock = ROOT / "constraints.txt"
    # Locked versions, CPU torch first as `make install` does (pip reuses the wheels it cached then).
    run([python, "-m", "pip", "install", "--quiet", "-c", lock, "torch"], env=env)
    run([python, "-m", "pip", "install", "--quiet", "-c", lock, wheel], env=env)

    user_folder = tmp_path / "elsewhere"
    user_folder.mkdir()
    where = run([python, "-c", "import rlhf_trl; print(rlhf_trl.__file__)"], cwd=user_folder, env=env).stdout
    assert Path(where.strip()).is_relative_to(venv), f"imported from {where}, not from the installed wheel"

    listing = run([venv / "bin" / "rlhf-trl", "recipes"], cwd=user_folder, env=env).stdout
    assert "tiny" in listing and "zero2" in listing

    result = run(
        [venv / "bin" / "rlhf-trl", "e2e", "--recipe", "tiny", "--step", "1", "--output-dir", "out"],
        cwd=user_folder,
        env=env,
    )
    step_dir = user_folder / "out" / "step1_sft"
    assert (step_dir / "config.json").exists() and (step_dir / "run_info.json").exists(), result.stdout[-3000:]
    assert "gold score" in result.stdout
    assert "Loading weights" not in result.stdout + result.stderr


def copy_lock_tools(tmp_path: Path) -> Path:
    for name in ("pyproject.toml", "constraints.txt", ".ci/lock.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def test_lock_matches_pyproject():
    result = subprocess.run([sys.executable, ROOT / ".ci" / "lock.py", "check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_lock_pins_every_dependency_exactly():
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and line[0] != "#"]
    assert pins and all("==" in line for line in pins)
    names = {line.split("==")[0].lower() for line in pins}
    assert {"torch", "transformers", "trl", "accelerate", "deepspeed", "peft", "datasets", "pytest"} <= names
    assert "rlhf-trl" not in names


def test_stale_lock_says_so_in_one_line(tmp_path):
    copy = copy_lock_tools(tmp_path)
    pyproject = copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"pyyaml>=6,<7"', '"pyyaml>=6,<8"'))
    result = subprocess.run([sys.executable, copy / ".ci" / "lock.py", "check"], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "out of date" in result.stderr and "make lock" in result.stderr
