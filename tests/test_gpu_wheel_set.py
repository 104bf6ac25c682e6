"""benchmarks/gpu_wheel_set.py: which locked wheels a GPU machine needs, a bitsandbytes wheel cut to one CUDA major,
and the requirement check run there after the install; on fake installed distributions, offline."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_wheel_set.py"
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_wheel_set  # noqa: E402


def fake_distribution(site: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {requirement}" for requirement in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    """Installed distributions seen only in a folder of our own (importlib.metadata reads sys.path)."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.setattr(sys, "path", [str(site)])
    return site


def test_pins_carry_core_libraries_always_and_the_rest_only_when_the_image_lacks_it(fake_site):
    fake_distribution(fake_site, "transformers", "5.24.0", ("tokenizers>=0.22", "numpy", "regex", "torch>=2.6"))
    fake_distribution(fake_site, "tokenizers", "0.23.3", ("huggingface-hub",))
    fake_distribution(fake_site, "huggingface-hub", "2.4.0", ("httpx2>=2", 'tomli; python_version < "3.11"'))
    fake_distribution(fake_site, "httpx2", "2.16.2")
    fake_distribution(fake_site, "datasets", "5.2.0", ("dill", "pyarrow>=21", 'docs-only; extra == "docs"'))
    fake_distribution(fake_site, "dill", "0.4.1")
    fake_distribution(fake_site, "numpy", "2.4.6")
    lock = {
        name: version
        for name, version in (
            ("transformers", "5.24.0"), ("tokenizers", "0.23.3"), ("huggingface-hub", "2.4.0"), ("httpx2", "2.16.2"),
            ("datasets", "5.2.0"), ("dill", "0.4.1"), ("pyarrow", "26.0.1"), ("numpy", "2.4.6"),
            ("regex", "2026.11.19"), ("tomli", "2.2"), ("docs-only", "1.0"), ("torch", "2.13.0"),
            ("nvidia-cublas", "13.0"), ("wandb", "0.31.0"), ("rich", "15.0.0"),
        )
    }  # fmt: skip
    image = {"transformers", "tokenizers", "numpy", "pyarrow", "regex", "huggingface-hub"}
    roots = [Requirement("transformers>=5.17"), Requirement("datasets>=4"), Requirement("torch>=2.6")]
    pins = gpu_wheel_set.device_pins(lock, image, roots, "3.12")
    assert pins == [
        "transformers==5.24.0",  # core: carried although the image has one
        "tokenizers==0.23.3",
        "huggingface-hub==2.4.0",
        "httpx2==2.16.2",  # pulled in by a core library, missing from the image
        "datasets==5.2.0",
        "dill==0.4.1",
    ]  # not: pyarrow/numpy/regex (on the image), tomli (python < 3.11 only), docs-only (an extra), torch and
    # nvidia (the machine's own), wandb and rich (nothing here pulls them in)
    on_python_310 = gpu_wheel_set.device_pins(lock, image, roots, "3.10")
    assert "tomli==2.2" in on_python_310


def test_check_names_each_unmet_requirement_and_who_needs_it(fake_site, tmp_path):
    fake_distribution(fake_site, "alpha", "1.0", ("beta>=2", 'gamma; extra == "x"', 'delta; python_version < "3"'))
    fake_distribution(fake_site, "beta", "1.5", ("epsilon",))
    fake_distribution(fake_site, "torch", "2.11.0+cu130", ("nvidia-cublas",))
    roots = [Requirement("alpha>=1"), Requirement("zeta>=3"), Requirement("torch>=2.6,<2.14")]
    problems = gpu_wheel_set.unmet_requirements(roots)
    assert problems == [
        "the project needs zeta>=3: zeta is not installed",
        "alpha 1.0 needs beta>=2: beta 1.5 is installed",
        "beta 1.5 needs epsilon: epsilon is not installed",
    ]  # torch 2.11+cu130 meets <2.14 and its CUDA libraries are not followed
    fake_distribution(fake_site, "zeta", "3.1")
    fake_distribution(fake_site, "epsilon", "1")
    (fake_site / "beta-1.5.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: beta\nVersion: 2.0\n")
    assert gpu_wheel_set.unmet_requirements(roots) == []


def test_check_command_on_this_environment_and_on_a_bad_pyproject(tmp_path):
    result = subprocess.run([sys.executable, SCRIPT, "check", "--pyproject", REPO / "pyproject.toml"],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    bad = tmp_path / "pyproject.toml"
    bad.write_text('[project]\ndependencies = ["torch>>2"]\n')
    result = subprocess.run([sys.executable, SCRIPT, "check", "--pyproject", bad], capture_output=True, text=True)
    assert result.returncode == 2 and str(bad) in result.stderr and "torch>>2" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def fake_bitsandbytes_wheel(folder: Path) -> Path:
    files = {
        "bitsandbytes/__init__.py": b"__version__ = '0.50.2'\n",
        "bitsandbytes/libbitsandbytes_cpu.so": b"cpu" * 100,
        "bitsandbytes/libbitsandbytes_cuda118.so": b"118" * 1000,
        "bitsandbytes/libbitsandbytes_cuda128.so": b"128" * 1000,
        "bitsandbytes/libbitsandbytes_cuda130.so": b"130" * 100,
        "bitsandbytes/libbitsandbytes_cuda132.so": b"132" * 100,
        "bitsandbytes/libbitsandbytes_rocm72.so": b"rocm" * 1000,
        "bitsandbytes-0.50.2.dist-info/METADATA": b"Metadata-Version: 2.1\nName: bitsandbytes\nVersion: 0.50.2\n",
        "bitsandbytes-0.50.2.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(f"{name},{record_hash(data)},{len(data)}\n" for name, data in files.items())
    files["bitsandbytes-0.50.2.dist-info/RECORD"] = (record + "bitsandbytes-0.50.2.dist-info/RECORD,,\n").encode()
    wheel = folder / "bitsandbytes-0.50.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel


def test_slim_keeps_the_cpu_and_one_cuda_major_and_installs(tmp_path):
    wheel = fake_bitsandbytes_wheel(tmp_path)
    result = subprocess.run([sys.executable, SCRIPT, "slim", wheel, "--cuda", "13"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        libraries = sorted(Path(name).name for name in names if name.endswith(".so"))
        assert libraries == ["libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so"]
        record = archive.read("bitsandbytes-0.50.2.dist-info/RECORD").decode().splitlines()
        listed = {line.split(",")[0]: line.split(",")[1] for line in record}
        assert set(listed) == set(names)
        for name in names:
            if not name.endswith("RECORD"):
                assert listed[name] == record_hash(archive.read(name)), name
    assert not list(tmp_path.glob("*.partial"))
    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", target, wheel],
        capture_output=True, text=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    assert sorted(path.name for path in (target / "bitsandbytes").glob("*.so")) == libraries


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["slim", "WHEEL", "--cuda", "10"], "no CUDA 10 library"),
        (["slim", "WHEEL", "--cuda", "thirteen"], "--cuda 'thirteen'"),
        (["slim", "NOT_A_WHEEL"], "not a wheel"),
        (["pins", "--constraints", "MISSING"], "MISSING"),
        (["pins", "--image-packages", "MISSING"], "MISSING"),
    ],
)
def test_bad_input_is_one_line_and_leaves_the_wheel_alone(tmp_path, arguments, named):
    wheel = fake_bitsandbytes_wheel(tmp_path)
    before = wheel.read_bytes()
    (tmp_path / "NOT_A_WHEEL").write_text("text")
    replaced = [
        str(wheel) if part == "WHEEL" else str(tmp_path / part) if part.isupper() else part for part in arguments
    ]
    result = subprocess.run([sys.executable, SCRIPT, *replaced], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert wheel.read_bytes() == before


def test_gpu_wheels_refuses_a_bad_cuda_major_and_a_missing_lock_environment(tmp_path):
    script = REPO / "benchmarks" / "gpu_wheels.sh"
    result = subprocess.run([script, "--cuda", "x", "--dry-run"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "--cuda x" in result.stderr
    environment = {**os.environ, "LOCK_PYTHON": str(tmp_path / "no-python")}
    result = subprocess.run([script, "--dry-run"], capture_output=True, text=True, cwd=REPO, env=environment)
    assert result.returncode == 2 and "no lock environment" in result.stderr


def test_the_repository_wheel_set_leaves_out_what_the_image_has():
    """The real lock and image list: the core libraries are carried, the large packages the image has are not."""
    result = subprocess.run(
        [sys.executable, SCRIPT, "pins"], capture_output=True, text=True, cwd=REPO
    )  # the lock's environment: this test runs in it
    assert result.returncode == 0, result.stderr
    names = {line.split("==")[0] for line in result.stdout.split()}
    assert set(gpu_wheel_set.CORE) <= names
    assert not names & {"torch", "pyarrow", "numpy", "pandas", "matplotlib", "wandb", "trackio", "ruff"}
