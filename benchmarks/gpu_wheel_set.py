"""The wheels a GPU machine needs for the GPU check, small enough to carry, and a check of them once installed.

A GPU machine here has no network: what it lacks travels with the repository, within a size limit (64 MiB for the
repository and the wheels together). Three commands:

  pins    the locked ``name==version`` lines to fetch: the project's core libraries (CORE) at their locked versions
          always, and every other package the project's requirements pull in (followed through the installed
          metadata of the lock's environment, so run it with that environment's python) only when the machine's
          image lacks it (--image-packages: one name per line); torch and what comes with it are never carried.
  slim    rewrite a bitsandbytes wheel with only the CPU library and those of one CUDA major version (the full
          wheel holds builds for every CUDA, ROCm and XPU release: 42 MB against about 3).
  check   on the GPU machine, after the install: every requirement of the project (pyproject.toml) and of what it
          pulls in is met by what python imports there (PYTHONPATH included); each problem one line, exit 1.

    .venv/bin/python benchmarks/gpu_wheel_set.py pins --constraints constraints.txt \\
        --image-packages benchmarks/gpu_image_packages.txt --python-version 3.12
    python3 benchmarks/gpu_wheel_set.py slim .whl/bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl --cuda 13
    python3 benchmarks/gpu_wheel_set.py check --pyproject pyproject.toml
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

# The libraries whose versions decide the project's behaviour: carried at the locked version even when the machine
# has its own.
CORE = (
    "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed", "bitsandbytes", "huggingface-hub",
    "tokenizers", "safetensors",
)  # fmt: skip
# The machine's CUDA build of torch stays in use, with the packages that come with it; tools the check never runs.
NEVER = re.compile(
    r"^(torch|triton|nvidia-.*|sympy|mpmath|networkx|jinja2|markupsafe|filelock|fsspec|typing-extensions|setuptools"
    r"|ruff)$"
)
BITSANDBYTES_LIBRARY = re.compile(r"^bitsandbytes/libbitsandbytes_(?P<build>[a-z]+)(?P<version>\d*)\.(so|dll|dylib)$")


class InputError(Exception):
    """Bad input: reported in one line, exit 2."""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """{normalised name: version} of a lock file's ``name==version`` lines."""
    try:
        text = path.read_text()
    except OSError as error:
        raise InputError(f"{path}: {error.strerror or error}") from None
    pins = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", line)
        if match:
            pins[normalize(match.group(1))] = match.group(2)
    if not pins:
        raise InputError(f"{path}: no name==version lines")
    return pins


def read_names(path: Path) -> set[str]:
    """Normalised package names of a file with one name per line ('#' starts a comment)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise InputError(f"{path}: {error.strerror or error}") from None
    return {normalize(line.split("#", 1)[0].strip()) for line in lines if line.split("#", 1)[0].strip()}


def project_requirements(pyproject: Path) -> list[Requirement]:
    """The [project] dependencies of a pyproject.toml (extras left out)."""
    try:
        data = tomllib.loads(pyproject.read_text())
    except OSError as error:
        raise InputError(f"{pyproject}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"{pyproject}: not TOML ({error})") from None
    try:
        texts = data["project"]["dependencies"]
    except KeyError:
        raise InputError(f"{pyproject}: no [project] dependencies") from None
    requirements = []
    for text in texts:
        try:
            requirements.append(Requirement(text))
        except InvalidRequirement:
            raise InputError(f"{pyproject}: [project] dependencies: {text!r} is not a requirement") from None
    return requirements


def applies(requirement: Requirement, environment: dict[str, str] | None) -> bool:
    """Whether a requirement holds for a plain install (no extra) in ``environment`` (None: this python)."""
    if requirement.marker is None:
        return True
    return requirement.marker.evaluate({**(environment or {}), "extra": ""})


def requirements_of(name: str, environment: dict[str, str] | None) -> list[Requirement]:
    """The plain (no-extra) requirements of an installed distribution; [] when it is not installed."""
    try:
        texts = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return []
    return [requirement for requirement in map(Requirement, texts) if applies(requirement, environment)]


def pulled_in(roots: list[Requirement], environment: dict[str, str] | None) -> set[str]:
    """Normalised names of the roots and everything their installed metadata requires, transitively."""
    seen: set[str] = set()
    pending = [normalize(requirement.name) for requirement in roots if applies(requirement, environment)]
    while pending:
        name = pending.pop()
        if name in seen or NEVER.match(name):
            continue
        seen.add(name)
        pending.extend(normalize(requirement.name) for requirement in requirements_of(name, environment))
    return seen


def device_pins(lock: dict[str, str], image: set[str], roots: list[Requirement], python_version: str) -> list[str]:
    """The ``name==version`` lines to carry: CORE always; any other package the roots pull in when the image
    lacks it; never NEVER."""
    environment = {"python_version": python_version, "python_full_version": f"{python_version}.0"}
    needed = pulled_in(roots, environment)
    pins = []
    for name, version in lock.items():
        if NEVER.match(name):
            continue
        if name in CORE or (name in needed and name not in image):
            pins.append(f"{name}=={version}")
    return pins


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def slim_bitsandbytes(wheel: Path, cuda_major: str) -> tuple[int, int, list[str]]:
    """Rewrite a bitsandbytes wheel in place keeping, of its native libraries, the CPU one and the CUDA ones of
    ``cuda_major`` (e.g. '13': cuda130, cuda132); RECORD is rewritten to match. Returns (bytes before, bytes
    after, kept library names)."""

    def keep(member: str) -> bool:
        match = BITSANDBYTES_LIBRARY.match(member)
        if match is None:
            return True
        build, version = match.group("build"), match.group("version")
        return build == "cpu" or (build == "cuda" and version[: len(cuda_major)] == cuda_major and len(version) > 2)

    try:
        source = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as error:
        raise InputError(f"{wheel}: not a wheel ({error})") from None
    with source:
        members = [info for info in source.infolist() if keep(info.filename)]
        libraries = [info.filename for info in members if BITSANDBYTES_LIBRARY.match(info.filename)]
        if not any("cuda" in name for name in libraries):
            raise InputError(f"{wheel}: no CUDA {cuda_major} library in this wheel; nothing was changed")
        record = next((info for info in members if info.filename.endswith(".dist-info/RECORD")), None)
        if record is None:
            raise InputError(f"{wheel}: no .dist-info/RECORD; not a wheel")
        contents = {info.filename: source.read(info.filename) for info in members}
    lines = [record_line(name, data) for name, data in contents.items() if name != record.filename]
    contents[record.filename] = ("\n".join(lines + [f"{record.filename},,"]) + "\n").encode()
    before = wheel.stat().st_size
    staging = wheel.with_name(wheel.name + ".partial")
    with zipfile.ZipFile(staging, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for info in members:
            target.writestr(info, contents[info.filename], compress_type=zipfile.ZIP_DEFLATED)
    staging.replace(wheel)
    return before, wheel.stat().st_size, [Path(name).name for name in libraries]


def unmet_requirements(roots: list[Requirement]) -> list[str]:
    """One line per requirement, of the roots or of what they pull in here, that what python imports does not meet."""
    problems: list[str] = []
    seen: set[str] = set()
    pending: list[tuple[str, Requirement]] = [("the project", requirement) for requirement in roots]
    while pending:
        owner, requirement = pending.pop(0)
        if not applies(requirement, None):
            continue
        name = normalize(requirement.name)
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{owner} needs {requirement}: {name} is not installed")
            continue
        try:
            satisfied = requirement.specifier.contains(Version(installed), prereleases=True)
        except InvalidVersion:
            satisfied = False
        if not satisfied:
            problems.append(f"{owner} needs {requirement}: {name} {installed} is installed")
        if name in seen or NEVER.match(name):  # torch's own version is checked above, not its CUDA libraries
            continue
        seen.add(name)
        pending.extend((f"{name} {installed}", child) for child in requirements_of(requirement.name, None))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pins = commands.add_parser("pins", help="the locked name==version lines to carry")
    pins.add_argument("--constraints", type=Path, default=Path("constraints.txt"))
    pins.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    pins.add_argument("--image-packages", default="benchmarks/gpu_image_packages.txt", help="a file, or 'none'")
    pins.add_argument("--python-version", default="3.12")
    slim = commands.add_parser("slim", help="keep one CUDA major's libraries in a bitsandbytes wheel")
    slim.add_argument("wheel", type=Path)
    slim.add_argument("--cuda", default="13", help="the CUDA major version of the machine's torch")
    check = commands.add_parser("check", help="are the project's requirements met here?")
    check.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    options = parser.parse_args(argv)
    try:
        if options.command == "pins":
            image = set() if options.image_packages == "none" else read_names(Path(options.image_packages))
            roots = project_requirements(options.pyproject)
            print("\n".join(device_pins(read_lock(options.constraints), image, roots, options.python_version)))
        elif options.command == "slim":
            if not re.fullmatch(r"\d{1,2}", options.cuda):
                raise InputError(f"--cuda {options.cuda!r}: a CUDA major version such as 13")
            before, after, kept = slim_bitsandbytes(options.wheel, options.cuda)
            print(f"{options.wheel.name}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB ({', '.join(kept)})")
        else:
            problems = unmet_requirements(project_requirements(options.pyproject))
            for problem in problems:
                print(f"requirement not met: {problem}")
            if problems:
                return 1
            print("requirements: every requirement of the project and of what it pulls in is met")
    except InputError as error:
        print(f"gpu_wheel_set.py: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
