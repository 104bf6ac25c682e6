#!/usr/bin/env bash
# Fill .whl/ with the wheels a bare GPU machine (Python 3.12, torch + CUDA already installed, no network) needs to
# run the GPU check, at the exact versions of the project's lock file, small enough to travel with the repository
# (64 MiB for both). Run here, where PyPI is reachable; benchmarks/gpu_check.sh installs them there.
#
#   benchmarks/gpu_wheels.sh [--constraints FILE] [--dest DIR] [--python-version 3.12] [--image-packages FILE|none]
#                            [--cuda MAJOR] [--exclude REGEX] [--dry-run]
#
# What is carried (benchmarks/gpu_wheel_set.py pins, run with the lock's environment, .venv): the core libraries
# (transformers, trl, peft, accelerate, datasets, deepspeed, bitsandbytes, huggingface-hub, tokenizers, safetensors)
# at their locked versions, and what the project pulls in only when the machine's image lacks it
# (--image-packages, default benchmarks/gpu_image_packages.txt; 'none' carries all of it). torch and
# what comes with it are never carried. bitsandbytes keeps only its CPU and CUDA-MAJOR libraries (--cuda, default
# 13, the machine torch's CUDA). deepspeed is published as a source archive only, so its wheel is built here (pure
# Python: its CUDA kernels are compiled on first use on the GPU machine). About 32 MiB in all.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
constraints=constraints.txt
dest=.whl
python_version=3.12
image_packages=$here/gpu_image_packages.txt
cuda=13
dry_run=0
extra_skip=
python=${PYTHON:-python3}
# The lock's environment: its installed metadata says what each locked package pulls in.
lock_python=${LOCK_PYTHON:-$here/../.venv/bin/python}
max_mib=60

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --constraints) constraints=${2:?--constraints needs a file}; shift 2 ;;
        --dest) dest=${2:?--dest needs a folder}; shift 2 ;;
        --python-version) python_version=${2:?--python-version needs a version}; shift 2 ;;
        --image-packages) image_packages=${2:?--image-packages needs a file or none}; shift 2 ;;
        --cuda) cuda=${2:?--cuda needs a CUDA major version}; shift 2 ;;
        --exclude) extra_skip=${2:?--exclude needs a regular expression}; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_wheels.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$cuda" =~ ^[0-9]{1,2}$ ]] || { echo "gpu_wheels.sh: --cuda $cuda: a CUDA major version such as 13" >&2; exit 2; }
if [[ ! -x "$lock_python" ]]; then
    echo "gpu_wheels.sh: $lock_python: no lock environment (make install, or set LOCK_PYTHON)" >&2
    exit 2
fi
if [[ ! -f "$constraints" ]]; then
    echo "gpu_wheels.sh: $constraints: no such lock file (git merge the branch that adds it, or pass --constraints)" >&2
    exit 2
fi

pins_output=$("$lock_python" "$here/gpu_wheel_set.py" pins --constraints "$constraints" \
    --image-packages "$image_packages" --python-version "$python_version") || exit 2
mapfile -t pins <<<"$pins_output"
wanted=()
for pin in "${pins[@]}"; do
    name=${pin%%==*}
    if [[ -n "$extra_skip" && "$name" =~ ^($extra_skip)$ ]]; then
        continue
    fi
    wanted+=("$pin")
done
echo "gpu_wheels.sh: ${#wanted[@]} locked packages into $dest (Python $python_version)"
if [[ $dry_run -eq 1 ]]; then
    printf '%s\n' "${wanted[@]}"
    exit 0
fi
mkdir -p "$dest"
failed=()
for pin in "${wanted[@]}"; do
    if [[ "${pin%%==*}" == deepspeed ]]; then  # gpu_wheel_set.py pins gives normalised names
        "$python" -m pip wheel --quiet --no-deps "$pin" -w "$dest" || failed+=("$pin")
        continue
    fi
    # manylinux_2_24: bitsandbytes publishes only that tag
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$python_version" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dest" "$pin" || failed+=("$pin")
done
for wheel in "$dest"/bitsandbytes-*.whl; do
    if [[ -e "$wheel" ]]; then
        "$lock_python" "$here/gpu_wheel_set.py" slim "$wheel" --cuda "$cuda" || failed+=("$(basename "$wheel") (slim)")
    fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "gpu_wheels.sh: no wheel for: ${failed[*]}" >&2
    exit 1
fi
total_kib=$(du -sk "$dest" | cut -f1)
echo "gpu_wheels.sh: $dest holds $(( total_kib / 1024 )) MiB"
if (( total_kib > max_mib * 1024 )); then
    echo "gpu_wheels.sh: more than $max_mib MiB: with the repository it may not fit a 64 MiB transfer" >&2
fi
