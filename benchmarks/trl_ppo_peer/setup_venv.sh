#!/usr/bin/env bash
# Recreate the TRL 1.12 peer environment (.venv-trl112 at the repository root, or the folder given as $1) with the
# exact versions of requirements.txt. torch goes first (pinned without a local build tag, so the CPU or the CUDA
# wheel your index offers is taken), then everything else. Set PIP_EXTRA_INDEX_URL to add an index for torch.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${1:-$root/.venv-trl112}"
python="${PYTHON:-python3}"
"$python" -m venv "$venv"
"$venv/bin/pip" install "torch==2.13.0"
grep -v -E '^(#|torch==)' "$here/requirements.txt" > "$venv/requirements-no-torch.txt"
"$venv/bin/pip" install -r "$venv/requirements-no-torch.txt"
"$venv/bin/python" -c "import trl, transformers, torch; print('trl', trl.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
