"""The dependency lock (constraints.txt): exact versions of every direct and transitive dependency, tested together.

    python3 .ci/lock.py check            exit 1 with one line when constraints.txt no longer matches pyproject.toml
    python3 .ci/lock.py write FREEZE     write constraints.txt from `pip freeze` of a clean install (make lock)

The lock's header records a hash of pyproject.toml's dependency lists, so a change to them without a refreshed lock
is noticed by `make install` instead of installing versions nobody tested together.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import tomllib  # Python >= 3.11, which the lock is made and checked with

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "constraints.txt"
HASH_PREFIX = "# pyproject-dependencies-sha256: "
PROJECT = "rlhf-trl"


def dependencies_hash() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = {"dependencies": project.get("dependencies", []), "optional": project.get("optional-dependencies", {})}
    return hashlib.sha256(json.dumps(listed, sort_keys=True).encode()).hexdigest()


def recorded_hash() -> str | None:
    if not LOCK.exists():
        return None
    for line in LOCK.read_text().splitlines():
        if line.startswith(HASH_PREFIX):
            return line[len(HASH_PREFIX) :].strip()
    return None


def check() -> int:
    recorded = recorded_hash()
    if recorded is None:
        print(f"error: {LOCK.name} is missing or has no dependency hash; create it with `make lock`", file=sys.stderr)
        return 1
    if recorded != dependencies_hash():
        print(
            f"error: {LOCK.name} is out of date with pyproject.toml's dependencies; refresh it with `make lock` "
            "(installs the newest versions the ranges allow into a clean venv and pins them)",
            file=sys.stderr,
        )
        return 1
    return 0


def write(freeze_path: str) -> int:
    pins = []
    for line in Path(freeze_path).read_text().splitlines():
        name = re.split(r"[=<>@ ]", line, maxsplit=1)[0].strip()
        if not line.strip() or line.startswith("#") or name.lower().replace("_", "-") == PROJECT:
            continue
        # torch's local label (+cpu) names a build, not a version: the same pin then serves CPU and CUDA builds.
        pins.append(re.sub(r"^(torch==[^+\s]+)\+\S+$", r"\1", line.strip()))
    header = [
        "# Exact versions of every dependency of rlhf-trl, installed and tested together (make install uses them:",
        "# pip install -c constraints.txt). Refresh with `make lock` after changing pyproject.toml's dependencies.",
        f"# Made on Python {sys.version_info.major}.{sys.version_info.minor} with CPU torch "
        "(a CUDA machine gets the same torch version, CUDA build).",
        HASH_PREFIX + dependencies_hash(),
    ]
    LOCK.write_text("\n".join(header + sorted(pins, key=str.lower)) + "\n")
    print(f"wrote {LOCK.name}: {len(pins)} pinned packages")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["check"]:
        return check()
    if argv[:1] == ["write"] and len(argv) == 2:
        return write(argv[1])
    if argv[:1] == ["hash"]:
        print(dependencies_hash())
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
