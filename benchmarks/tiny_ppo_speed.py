"""Step time and held-out gold score of the tiny demo's PPO step, across code revisions, measured side by side.

Each run is ``python -m rlhf_trl.scripts.ppo`` with the tiny recipe (recipes/tiny/ppo.yaml of the working tree, less
``num_threads``, which older revisions do not know; OMP_NUM_THREADS=1 keeps them on one thread all the same) on the
demo's own step-1 and step-2 outputs, from a git worktree of each revision. Runs go one at a time, the revisions
interleaved round by round, so machine load hits them alike. A step's time is the sum of its generation, scoring
and training phases as logged in metrics.jsonl (every logging step); the gold score is the final held-out
evaluation.

    make demo   # outputs/demo/step1_sft and step2_reward
    PYTHONPATH=. python benchmarks/tiny_ppo_speed.py --rev bb052e5^ --rev HEAD --rounds 3 \
        --variant packed=HEAD:--max_tokens_per_micro_batch,128

Prints a markdown table; ``--append BENCHMARKS.md`` appends it with the date, machine and command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from step3_vs_trl import machine_description  # benchmarks/ is on sys.path when this script runs

from rlhf_trl.reporting.benchmarks_file import publish_section

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "tiny" / "ppo.yaml"
NEWER_KEYS = ("num_threads",)  # recipe keys older revisions reject; OMP_NUM_THREADS=1 stands in for them


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", action="append", default=[], help="a git revision to measure (repeatable)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=REV:FLAG,VALUE,...: REV with extra PPO flags (packed=HEAD:--max_tokens_per_micro_batch,128)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--sft-model", default=str(ROOT / "outputs" / "demo" / "step1_sft"))
    parser.add_argument("--reward-model", default=str(ROOT / "outputs" / "demo" / "step2_reward"))
    parser.add_argument("--append", help="append the markdown section to this file")
    return parser.parse_args(argv)


def fail(message: str):
    """Bad input: one line naming the option, exit 2."""
    print(f"tiny_ppo_speed.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def worktree(rev: str, root: Path) -> Path:
    path = root / rev.replace("/", "_").replace("^", "-parent").replace("~", "-")
    if not path.exists():
        added = subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(path), rev],
            capture_output=True,
            text=True,
        )
        if added.returncode:
            reason = (added.stderr.strip().splitlines() or ["git worktree add failed"])[-1]
            fail(f"--rev/--variant revision {rev!r}: {reason}")
    return path


def run_once(tree: Path, config: Path, output: Path, args, extra: list[str]) -> dict:
    command = [
        sys.executable, "-m", "rlhf_trl.scripts.ppo", "--config", str(config),
        "--model_name_or_path", args.sft_model, "--reward_model_path", args.reward_model,
        "--output_dir", str(output), "--overwrite_output_dir", "true", "--seed", str(args.seed), *extra,
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
    result = subprocess.run(command, cwd=tree, env=environment, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{tree.name}: PPO exited {result.returncode}\n{result.stderr[-2000:]}")
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    rows = [row for row in rows if "time/training_s" in row]
    phases = {
        name: statistics.mean(row[f"time/{name}_s"] for row in rows) for name in ("generation", "scoring", "training")
    }
    final = json.loads((output / "run_info.json").read_text())["final_metrics"]
    return {"step_s": sum(phases.values()), **phases, "gold": final["eval/gold_score"]}


def stopped(signum, _frame):
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    args = parse_args(argv)
    sides = [(rev, rev, []) for rev in args.rev]
    for variant in args.variant:
        name, _, spec = variant.partition("=")
        rev, _, flags = spec.partition(":")
        if not (name and rev and flags):
            fail(f"--variant {variant!r}: expected NAME=REV:FLAG,VALUE,...")
        sides.append((name, rev, flags.split(",")))
    if not sides:
        fail("give at least one --rev or --variant")
    scratch = Path(tempfile.mkdtemp(prefix="tiny-ppo-speed-"))
    recipe = {key: value for key, value in yaml.safe_load(RECIPE.read_text()).items() if key not in NEWER_KEYS}
    config = scratch / "ppo.yaml"
    config.write_text(yaml.safe_dump(recipe))
    trees: dict[str, Path] = {}
    results: dict[str, list[dict]] = {name: [] for name, _, _ in sides}
    # A stopped measurement (SIGTERM, as from `kill` or a time limit) still removes its worktrees and its run.
    signal.signal(signal.SIGTERM, stopped)
    try:
        for _, rev, _ in sides:
            trees[rev] = trees.get(rev) or worktree(rev, scratch)
        for round_index in range(args.rounds):
            for name, rev, extra in sides:
                result = run_once(trees[rev], config, scratch / f"{name}-{round_index}", args, extra)
                results[name].append(result)
                print(f"round {round_index + 1} {name}: {result}", file=sys.stderr)
    finally:
        for tree in trees.values():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    first = statistics.mean(r["step_s"] for r in results[sides[0][0]])
    lines = [
        f"## Tiny demo PPO step time across revisions (CPU), {now:%Y-%m-%d %H:%M} UTC",
        "",
        f"- Command: `python benchmarks/tiny_ppo_speed.py {shlex.join(argv if argv is not None else sys.argv[1:])}`",
        f"- Machine: {machine_description()}, one torch thread per run; one run at a time, the sides "
        f"interleaved over {args.rounds} rounds",
        f"- Workload: recipes/tiny/ppo.yaml (100 steps, batch 64, 2 mini-batches, 2 PPO epochs), seed {args.seed}, "
        "on the demo's step-1 and step-2 outputs; step time = generation + scoring + training, mean of logged steps",
        "",
        "| side | step s per round | mean step s | speed-up over the first side | held-out gold per round |",
        "|---|---|---|---|---|",
    ]
    for name, _, _ in sides:
        steps = [r["step_s"] for r in results[name]]
        mean = statistics.mean(steps)
        lines.append(
            f"| {name} | {' / '.join(f'{s:.4f}' for s in steps)} | {mean:.4f} | {first / mean:.2f}x | "
            f"{' / '.join(format(r['gold'], '.4f') for r in results[name])} |"
        )
    publish_section("\n".join(lines) + "\n", args.append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
