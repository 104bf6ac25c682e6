#!/usr/bin/env bash
# Fill .whl/ with the wheels a bare GPU machine (Python 3.12, torch + CUDA already installed) needs to run the GPU
# check, at the exact versions of the project's lock file. Run here, where PyPI is reachable; the GPU machine has no
# network and installs them with benchmarks/gpu_check.sh.
#
#   benchmarks/gpu_wheels.sh [--constraints FILE] [--dest DIR] [--python-version 3.12] [--exclude REGEX] [--dry-run]
#
# All of them take about 180 MB (pyarrow 53 MB, bitsandbytes 42 MB); where a transfer is limited, leave out what
# the machine has (--exclude 'numpy|pillow|matplotlib') or carry them in parts and run gpu_check.sh --only install
# once per part into the same --site.
# torch and the packages that come with it are left out (the machine's own CUDA build stays in use); so are tools
# the check never runs (ruff). deepspeed is published as a source archive only, so its wheel is built here (pure
# Python: its CUDA kernels are compiled on first use on the GPU machine).
set -euo pipefail

constraints=constraints.txt
dest=.whl
python_version=3.12
dry_run=0
extra_skip=
python=${PYTHON:-python3}
# Already on a machine with torch + CUDA, or not needed by the check.
skip_regex='^(torch|triton|nvidia-.*|sympy|mpmath|networkx|jinja2|markupsafe|filelock|fsspec|typing-extensions|setuptools|ruff)$'

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --constraints) constraints=${2:?--constraints needs a file}; shift 2 ;;
        --dest) dest=${2:?--dest needs a folder}; shift 2 ;;
        --python-version) python_version=${2:?--python-version needs a version}; shift 2 ;;
        --exclude) extra_skip=${2:?--exclude needs a regular expression}; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_wheels.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ ! -f "$constraints" ]]; then
    echo "gpu_wheels.sh: $constraints: no such lock file (git merge the branch that adds it, or pass --constraints)" >&2
    exit 2
fi

# name==version lines of the lock, comments and blanks dropped; names normalised as PyPI does (lower case, - for _).
mapfile -t pins < <(grep -E '^[A-Za-z0-9_.-]+==[^ ]+' "$constraints" | sed 's/[[:space:]].*//')
if [[ ${#pins[@]} -eq 0 ]]; then
    echo "gpu_wheels.sh: $constraints: no name==version lines" >&2
    exit 2
fi
wanted=()
for pin in "${pins[@]}"; do
    name=$(echo "${pin%%==*}" | tr 'A-Z_' 'a-z-')
    if [[ "$name" =~ $skip_regex ]] || [[ -n "$extra_skip" && "$name" =~ ^($extra_skip)$ ]]; then
        continue
    fi
    wanted+=("$pin")
done
echo "gpu_wheels.sh: ${#wanted[@]} of ${#pins[@]} locked packages into $dest (Python $python_version)"
if [[ $dry_run -eq 1 ]]; then
    printf '%s\n' "${wanted[@]}"
    exit 0
fi
mkdir -p "$dest"
failed=()
for pin in "${wanted[@]}"; do
    name=$(echo "${pin%%==*}" | tr 'A-Z_' 'a-z-')
    if [[ "$name" == deepspeed ]]; then
        "$python" -m pip wheel --quiet --no-deps "$pin" -w "$dest" || failed+=("$pin")
        continue
    fi
    # manylinux_2_24: bitsandbytes publishes only that tag
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$python_version" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dest" "$pin" || failed+=("$pin")
done
du -sh "$dest"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "gpu_wheels.sh: no wheel for: ${failed[*]}" >&2
    exit 1
fi
