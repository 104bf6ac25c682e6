#!/usr/bin/env bash
# The GPU check: everything that needs a CUDA device, in one run of at most about 10 minutes on one H100/H200.
#
#   benchmarks/gpu_check.sh [--wheels DIR] [--site DIR] [--benchmarks-file FILE] [--log FILE] [--out DIR]
#                           [--only PART ...] [--dry-run]
#
# Parts, each under its own `timeout` (seconds):
#   install      wheels from --wheels (default .whl/, filled by benchmarks/gpu_wheels.sh) into --site (default
#                /tmp/site) with pip --no-index --no-deps; the repository and the site go first on PYTHONPATH;
#                then every requirement of the project is checked against what is there (gpu_wheel_set.py check)
#   gpu-tests    pytest -m gpu                                                          (120)
#   bench-hf     rlhf-trl bench --preset opt-1.3b --bf16, hf rollout backend; its first-update importance
#                ratio is the bf16 mismatch of rollout log-probs taken from generation  (120)
#   bench-ds     the same with the deepspeed rollout backend                            (120)
#   bench-llama  rlhf-trl bench --preset llama-1b --bf16                                (90)
#   vllm         vLLM rollout: skipped unless vllm imports (see the README's speed section) (10)
#   memory       peak GPU memory of PPO, full vs 8-bit LoRA (vs 4-bit LoRA where rlhf_trl.bench.memory offers it)
#                                                                                       (120)
# The benchmark commands append their own sections to --benchmarks-file; a summary section (date, device, command,
# each part's outcome) follows them. The log goes to --log; with --out (default $OUT when set) the log and the
# benchmarks file are copied there too. Exit status: 0 when every part that ran succeeded, 1 otherwise, 2 on bad
# arguments or without CUDA.
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
wheels=$repo/.whl
site=/tmp/site
benchmarks_file=$repo/BENCHMARKS.md
log=$repo/outputs/gpu_check/gpu_check-$(date -u +%Y%m%dT%H%M%S).log
out=${OUT:-}
dry_run=0
only=()
all_parts=(install gpu-tests bench-hf bench-ds bench-llama vllm memory)
python=${PYTHON:-python3}
command_line="benchmarks/gpu_check.sh $*"

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
fail() { echo "gpu_check.sh: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --wheels) wheels=${2:?--wheels needs a folder}; shift 2 ;;
        --site) site=${2:?--site needs a folder}; shift 2 ;;
        --benchmarks-file) benchmarks_file=${2:?--benchmarks-file needs a file}; shift 2 ;;
        --log) log=${2:?--log needs a file}; shift 2 ;;
        --out) out=${2:?--out needs a folder}; shift 2 ;;
        --only)
            shift
            while [[ $# -gt 0 && "$1" != --* ]]; do only+=("$1"); shift; done
            [[ ${#only[@]} -gt 0 ]] || fail "--only needs part names: ${all_parts[*]}"
            ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) fail "unknown option $1 (see --help)" ;;
    esac
done
for part in "${only[@]}"; do
    [[ " ${all_parts[*]} " == *" $part "* ]] || fail "--only: unknown part '$part' (parts: ${all_parts[*]})"
done
parts=("${all_parts[@]}")
[[ ${#only[@]} -gt 0 ]] && parts=("${only[@]}")

# name timeout command...: the plan, in order.
declare -A limit=([install]=120 [gpu-tests]=120 [bench-hf]=120 [bench-ds]=120 [bench-llama]=90 [vllm]=10 [memory]=120)
bench="$python -m rlhf_trl.cli bench --bf16 --steps 2 --warmup-steps 1 --benchmarks-file $benchmarks_file"
memory_modes="full 8bit-lora"
declare -A plan=(
    [install]="$python -m pip install --quiet --no-index --no-deps --target $site $wheels/*.whl && $python $repo/benchmarks/gpu_wheel_set.py check --pyproject $repo/pyproject.toml"
    [gpu-tests]="$python -m pytest -q -p no:cacheprovider -m gpu $repo/tests"
    [bench-hf]="$bench --preset opt-1.3b --rollout-backend hf"
    [bench-ds]="$bench --preset opt-1.3b --rollout-backend deepspeed"
    [bench-llama]="$bench --preset llama-1b --rollout-backend hf"
    [vllm]="$python -c 'import vllm'"
    [memory]="$python -m rlhf_trl.bench.memory --size opt-125m --pipeline-step ppo --append --benchmarks-file $benchmarks_file --mode MODES"
)

if [[ $dry_run -eq 1 ]]; then
    for part in "${parts[@]}"; do printf '%-12s %4ss  %s\n' "$part" "${limit[$part]}" "${plan[$part]}"; done
    exit 0
fi
"$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
    || fail "needs a CUDA GPU with torch (torch.cuda.is_available() is False here); nothing was run"

mkdir -p "$(dirname "$log")"
export PYTHONPATH=$repo:$site${PYTHONPATH:+:$PYTHONPATH}
parts_file=$(mktemp)
status=0
echo "gpu_check: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), parts: ${parts[*]}" | tee -a "$log"
# Torch's C++/CUDA extension builds (DeepSpeed's ops) hold a lock file while they compile; a part stopped by its
# timeout mid-build leaves it behind, and every later build would wait on it forever. Parts run one at a time, so a
# lock present between parts is stale.
extensions=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}
for part in "${parts[@]}"; do
    while IFS= read -r -d '' stale; do
        echo "$part: removed $stale, a build lock left by a stopped part" | tee -a "$log"
        rm -f "$stale"
    done < <(find "$extensions" -name lock -type f -print0 2>/dev/null)
    command=${plan[$part]}
    if [[ $part == install ]]; then
        compgen -G "$wheels/*.whl" >/dev/null || { echo "install: no wheels in $wheels (run benchmarks/gpu_wheels.sh)" | tee -a "$log"; printf '%s\t3\t0\t%s\n' "$part" "${limit[$part]}" >>"$parts_file"; continue; }
        mkdir -p "$site"
    fi
    if [[ $part == vllm ]]; then
        if ! "$python" -c 'import vllm' 2>/dev/null; then
            echo "vllm: not installed (it pins another torch and transformers; see the README)" | tee -a "$log"
            printf '%s\t3\t0\t%s\n' "$part" "${limit[$part]}" >>"$parts_file"
            continue
        fi
        echo "vllm: installed, but rlhf-trl has no vllm rollout backend yet" | tee -a "$log"
    fi
    if [[ $part == memory ]]; then
        # 4-bit LoRA where the memory benchmark offers it (decided by asking it, not by version)
        "$python" -m rlhf_trl.bench.memory --help 2>/dev/null | grep -q 4bit-lora && memory_modes="$memory_modes 4bit-lora"
        command=${command/MODES/$memory_modes}
    fi
    echo "== $part (limit ${limit[$part]} s): $command" | tee -a "$log"
    started=$(date +%s)
    timeout --kill-after=10 "${limit[$part]}" bash -c "$command" >>"$log" 2>&1
    code=$?
    seconds=$(( $(date +%s) - started ))
    echo "== $part: exit $code after ${seconds} s" | tee -a "$log"
    printf '%s\t%s\t%s\t%s\n' "$part" "$code" "$seconds" "${limit[$part]}" >>"$parts_file"
    [[ $code -eq 0 ]] || status=1
done
device=$("$python" -c 'import torch; print(f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})")')
"$python" "$repo/benchmarks/gpu_check_report.py" --parts "$parts_file" --device "$device" \
    --command "$command_line" --log "$log" --benchmarks-file "$benchmarks_file" | tee -a "$log"
rm -f "$parts_file"
if [[ -n "$out" ]]; then
    mkdir -p "$out" && cp "$log" "$benchmarks_file" "$out/"
fi
exit $status
