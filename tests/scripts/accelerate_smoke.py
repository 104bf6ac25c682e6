"""A few optimizer steps of a tiny language model through ``Accelerator``; launched by the config tests.

Usage: ``accelerate launch --config_file accelerate_configs/cpu.yaml tests/scripts/accelerate_smoke.py --report r``
(or under ``torchrun``). Each process writes ``<report>.<rank>.json`` with the distributed setup it saw, its losses and
a checksum of the trained weights; the process exits non-zero if the loss did not fall.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import OPTForCausalLM

from rlhf_trl.tiny.model import build_config, build_tokenizer

SENTENCES = [f"Human: sort {a} {b} Assistant: {min(a, b)} {max(a, b)}" for a in range(10) for b in range(10)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--report", required=True, help="path prefix of the per-process JSON reports")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8, help="per-process batch size")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    accelerator = Accelerator()
    tokenizer = build_tokenizer()
    tokenizer.padding_side = "right"
    torch.manual_seed(0)  # same initial weights on every process
    model = OPTForCausalLM(build_config(tokenizer, hidden_size=32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batches = DataLoader(SENTENCES, batch_size=args.batch_size, shuffle=False, drop_last=True)
    # The dataloader goes through prepare with the model: DeepSpeed's "auto" micro-batch size is read from it.
    model, optimizer, batches = accelerator.prepare(model, optimizer, batches)

    losses, first_batch_texts = [], None
    model.train()
    step = 0
    while step < args.steps:
        for texts in batches:
            first_batch_texts = first_batch_texts or list(texts)
            encoded = tokenizer(list(texts), return_tensors="pt", padding=True).to(accelerator.device)
            labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
            loss = model(**encoded, labels=labels).loss
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            step += 1
            if step == args.steps:
                break

    # get_state_dict gathers ZeRO-3 shards (the configs enable zero3_save_16bit_model for this).
    state = accelerator.get_state_dict(model)
    checksum = float(sum(tensor.double().sum() for tensor in state.values()))
    report = {
        "distributed_type": str(accelerator.distributed_type),
        "num_processes": accelerator.num_processes,
        "process_index": accelerator.process_index,
        "device": str(accelerator.device),
        "model_class": type(model).__name__,
        "losses": losses,
        "first_batch_texts": first_batch_texts,
        "weights_checksum": checksum,
    }
    with open(f"{args.report}.{accelerator.process_index}.json", "w", encoding="utf-8") as file:
        json.dump(report, file, indent=2)
    accelerator.end_training()
    return 0 if losses[-1] < losses[0] else 1


if __name__ == "__main__":
    sys.exit(main())
