"""Memory that rollout log-probs from generation cost: read during decoding (the default, one [batch, vocab] logits
tensor held at a time) against generate's stored logits (``output_logits``: one [batch, vocab] float32 tensor per
generated token, kept until generation ends; used where generation may compile, e.g. a static cache).

Each side runs in a fresh process: a Llama-shaped actor (hidden 64, 2 layers) with a large vocabulary (default
128,256, Llama 3's) samples --answer-length tokens (forced) for --batch prompts of 16 tokens through the ``hf``
rollout backend, and reports the growth of its peak memory (peak RSS on CPU, peak allocated on CUDA) over what it
held before generating, and the wall time.

    PYTHONPATH=. python benchmarks/rollout_logprobs_memory.py --append BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
from pathlib import Path

from step3_vs_trl import machine_description  # benchmarks/ is on sys.path when this script runs

from rlhf_trl.reporting.benchmarks_file import publish_section

# name, generation settings, what the side measures
SIDES = (
    ("read during decoding (default)", {}),
    ("output_logits (static cache)", {"cache_implementation": "static"}),
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=128_256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--answer-length", type=int, default=64)
    parser.add_argument("--append", help="append the markdown section to this file")
    parser.add_argument("--side", type=int, help=argparse.SUPPRESS)  # internal: run one side in this process
    options = parser.parse_args(argv)
    for name in ("vocab", "batch", "answer_length"):
        if getattr(options, name) < 1:
            print(f"rollout_logprobs_memory.py: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            raise SystemExit(2)
    return options


def peak_mib() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_side(options) -> dict:
    """One side in this process: {'growth_mib', 'seconds', 'logprobs_shape'}."""
    import time

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from rlhf_trl.bench.workloads import build_tokenizer
    from rlhf_trl.ppo.rollout import HFRollout

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=options.vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=1024, pad_token_id=1, eos_token_id=2, bos_token_id=0,
    )  # fmt: skip
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = LlamaForCausalLM(config).to(device).eval()
    tokenizer = build_tokenizer(config)
    _, settings = SIDES[options.side]
    generation = GenerationConfig(
        max_new_tokens=options.answer_length, min_new_tokens=options.answer_length, do_sample=True, temperature=0.7,
        top_k=0, pad_token_id=1, eos_token_id=2, **settings,
    )  # fmt: skip
    rollout = HFRollout(model, tokenizer, generation)
    prompts = torch.randint(3, options.vocab, (options.batch, 16), device=device)
    mask = torch.ones_like(prompts)
    rollout.generate_with_logprobs(prompts[:2], mask[:2], 0.7)  # warm-up: kernels and allocator
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = peak_mib() if torch.cuda.is_available() else current_rss_mib()
    started = time.perf_counter()
    completion_ids, logprobs = rollout.generate_with_logprobs(prompts, mask, 0.7)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    assert logprobs is not None and logprobs.shape == completion_ids.shape
    return {"growth_mib": peak_mib() - before, "seconds": seconds, "logprobs_shape": list(logprobs.shape)}


def current_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def device_line() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}), peak allocated"
    return f"{machine_description()} (torch {torch.__version__}), peak RSS"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options = parse_args(argv)
    if options.side is not None:
        print(json.dumps(run_side(options)))
        return 0
    results = []
    for index, (name, _) in enumerate(SIDES):
        command = [sys.executable, __file__, "--vocab", str(options.vocab), "--batch", str(options.batch),
                   "--answer-length", str(options.answer_length), "--side", str(index)]  # fmt: skip
        finished = subprocess.run(command, capture_output=True, text=True)
        if finished.returncode:
            print(f"rollout_logprobs_memory.py: side {name!r} failed:\n{finished.stderr[-2000:]}", file=sys.stderr)
            return 1
        results.append((name, json.loads(finished.stdout.strip().splitlines()[-1])))
    stored = options.batch * options.vocab * 4 * options.answer_length / 2**20
    when = datetime.datetime.now(datetime.timezone.utc)
    lines = [
        f"## Rollout log-probs from generation: memory, {when:%Y-%m-%d %H:%M UTC}",
        "",
        f"- Command: `{shlex.join(['python', 'benchmarks/rollout_logprobs_memory.py', *argv])}`",
        f"- Device: {device_line()}",
        f"- Workload: Llama-shaped actor (hidden 64, 2 layers, {options.vocab:,}-token vocabulary), {options.batch} "
        f"prompts of 16 tokens, {options.answer_length} sampled tokens each (forced), temperature 0.7; each side in "
        "a fresh process after a warm-up generation",
        f"- Every step's float32 logits together: {options.batch} x {options.vocab:,} x 4 bytes x "
        f"{options.answer_length} = {stored:,.0f} MiB",
        "",
        "| side | peak memory growth during generation MiB | generation s |",
        "|---|---|---|",
        *[f"| {name} | {result['growth_mib']:,.0f} | {result['seconds']:.2f} |" for name, result in results],
    ]
    publish_section("\n".join(lines) + "\n", options.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
