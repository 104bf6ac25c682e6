"""What PPO learns from: the prompt set and its batches, what one step collects (the rollout), the resumable prompt
sampler and score normalisation."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from rlhf_trl.generation import completion_mask, completion_texts, encode_prompts, is_conversation

logger = logging.getLogger("rlhf_trl.ppo.trainer")


def micro_batches(size: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most batch_size covering range(size)."""
    for start in range(0, size, batch_size):
        yield slice(start, min(start + batch_size, size))


class PromptSet:
    """The prompts of a dataset ready for generation.

    ``prompts`` are as the dataset gives them (text, or TRL messages: reward functions receive them so), ``ids`` their
    token ids left-truncated to max_prompt_length (conversations rendered by the chat template without a second BOS),
    ``columns`` the dataset's other columns. ``batch`` collates left-padded batches on ``device``.
    """

    def __init__(self, dataset, name: str, tokenizer, max_prompt_length: int, device):
        if dataset is None or len(dataset) == 0:
            raise ValueError(f"{name} is empty: PPO needs prompts")
        if "prompt" not in dataset.column_names:
            raise ValueError(f"{name} has no 'prompt' column (columns: {dataset.column_names})")
        prompts = list(dataset["prompt"])
        for index, prompt in enumerate(prompts):
            if is_conversation(prompt):
                if not tokenizer.chat_template:
                    raise ValueError(
                        f"{name} record {index}: conversational prompt but the tokenizer has no chat template"
                    )
            elif not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"{name} record {index}: field 'prompt' is empty or not text")
        token_ids = encode_prompts(tokenizer, prompts)
        truncated = sum(len(ids) > max_prompt_length for ids in token_ids)
        if truncated:
            logger.warning(
                "%s: %d prompts longer than %d tokens were left-truncated", name, truncated, max_prompt_length
            )
        self.prompts = prompts
        self.ids = [ids[-max_prompt_length:] for ids in token_ids]
        self.columns = {key: dataset[key] for key in dataset.column_names if key != "prompt"}
        self.pad_token_id = tokenizer.pad_token_id
        self.device = device

    def __len__(self) -> int:
        return len(self.prompts)

    def batch(self, indices: list[int]) -> dict:
        """The prompts at ``indices`` with their columns, left-padded."""
        return self.collate(
            [self.prompts[i] for i in indices],
            [self.ids[i] for i in indices],
            {key: [values[i] for i in indices] for key, values in self.columns.items()},
        )

    def collate(self, prompts: list, id_lists: list[list[int]], columns: dict[str, list]) -> dict:
        """{"prompts", "columns", "prompt_ids" [B, P] left-padded, "prompt_mask" [B, P]} on the device."""
        length = max(len(ids) for ids in id_lists)
        pad = self.pad_token_id
        input_ids = torch.tensor([[pad] * (length - len(ids)) + ids for ids in id_lists])
        mask = torch.tensor([[0] * (length - len(ids)) + [1] * len(ids) for ids in id_lists])
        return {
            "prompts": prompts,
            "columns": columns,
            "prompt_ids": input_ids.to(self.device),
            "prompt_mask": mask.to(self.device),
        }


# Rollout fields with one row per sample: [B, C] per answer token, or [B] per sample.
ROW_TENSORS = (
    "completion_ids", "completion_mask", "logprobs", "ref_logprobs", "values", "scores", "raw_scores", "gold_scores",
    "valid", "kl", "rewards", "advantages", "returns",
)  # fmt: skip


@dataclass
class Rollout:
    """One step's experience on this process. Shapes: B samples, P prompt tokens, C completion tokens."""

    prompts: list  # each prompt as the dataset gives it: text, or a conversation (TRL messages)
    columns: dict[str, list]  # other dataset columns, handed to reward functions
    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P]
    completion_ids: torch.Tensor  # [B, C] pad after the first EOS
    completion_mask: torch.Tensor  # [B, C] 1 up to and including the first EOS
    completions: list[str] = field(default_factory=list)  # answer texts (special tokens left out)
    logprobs: torch.Tensor | None = None  # [B, C] actor at generation time
    ref_logprobs: torch.Tensor | None = None  # [B, C]
    values: torch.Tensor | None = None  # [B, C]
    scores: torch.Tensor | None = None  # [B] shaped score (after penalty, normalisation, clip)
    raw_scores: torch.Tensor | None = None  # [B] reward sources' weighted sum before shaping
    score_parts: dict[str, torch.Tensor] = field(default_factory=dict)
    gold_scores: torch.Tensor | None = None  # [B] true quality where a gold scorer exists (logged only)
    valid: torch.Tensor | None = None  # [B] bool: False where a reward source gave NaN/inf (drop_invalid_rewards)
    kl: torch.Tensor | None = None  # [B, C] per-token KL estimate
    rewards: torch.Tensor | None = None  # [B, C]
    advantages: torch.Tensor | None = None  # [B, C]
    returns: torch.Tensor | None = None  # [B, C]

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    @staticmethod
    def from_generation(batch: dict, completion_ids, logprobs, tokenizer) -> Rollout:
        """The rollout of a prompt batch (PromptSet.batch) and what the generator returned for it: completion ids
        [B, C'] (and their log-probs [B, C'] or None). Everything after the first EOS becomes padding."""
        if completion_ids.shape[1] == 0:  # every sequence stopped at once; keep one pad column so shapes hold
            logprobs = None
            completion_ids = torch.full(
                (completion_ids.shape[0], 1), tokenizer.pad_token_id, device=completion_ids.device
            )
        mask = completion_mask(completion_ids, tokenizer.eos_token_id, tokenizer.pad_token_id)
        completion_ids = completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
        return Rollout(
            prompts=batch["prompts"],
            columns=batch["columns"],
            prompt_ids=batch["prompt_ids"],
            prompt_mask=batch["prompt_mask"],
            completion_ids=completion_ids,
            completion_mask=mask,
            completions=completion_texts(tokenizer, batch["prompt_ids"], completion_ids),
            logprobs=logprobs.float() if logprobs is not None else None,
        )

    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask.to(self.prompt_mask.dtype)], dim=1)

    def loss_mask(self) -> torch.Tensor:
        """[B, C] float: real completion tokens of the samples that count (invalid rewards dropped)."""
        mask = self.completion_mask.float()
        if self.valid is not None:
            mask = mask * self.valid.to(mask.device, mask.dtype)[:, None]
        return mask

    def select(self, index: torch.Tensor, cut: bool = True) -> Rollout:
        """The rollout of the samples ``index`` [M], without the columns that are padding in all of them: the prompt
        columns before the longest prompt and the answer columns after the longest answer. A micro-batch's forward
        then runs on its own width rather than the whole rollout's; the dropped positions are masked everywhere,
        so its outputs on the kept ones are the same. ``cut=False`` keeps the rollout's width."""
        index = index.to(self.prompt_ids.device)
        prompt_mask = self.prompt_mask[index]
        completion_mask = self.completion_mask[index]
        first, width = 0, completion_mask.shape[1]
        if cut:
            occupied = prompt_mask.any(0).nonzero()
            first = int(occupied[0]) if len(occupied) else prompt_mask.shape[1] - 1
            occupied = completion_mask.any(0).nonzero()
            width = int(occupied[-1]) + 1 if len(occupied) else 1
        positions = index.tolist()

        def pick(value):
            if value is None:
                return None
            if isinstance(value, list):
                return [value[position] for position in positions]
            value = value[index.to(value.device)]
            return value[:, :width] if value.dim() == 2 else value

        return Rollout(
            prompts=pick(self.prompts),
            columns={key: pick(values) for key, values in self.columns.items()},
            prompt_ids=self.prompt_ids[index, first:],
            prompt_mask=prompt_mask[:, first:],
            completions=pick(self.completions),
            score_parts={name: pick(scores) for name, scores in self.score_parts.items()},
            **{name: pick(getattr(self, name)) for name in ROW_TENSORS},
        )

    @staticmethod
    def concatenate(parts: list[Rollout], pad_token_id: int) -> Rollout:
        """Join generation batches (prompt and completion lengths may differ) into one rollout."""
        if len(parts) == 1:
            return parts[0]
        prompt_length = max(part.prompt_ids.shape[1] for part in parts)
        completion_length = max(part.completion_ids.shape[1] for part in parts)

        def pad(tensor, length, value, left):
            missing = length - tensor.shape[1]
            padding = (missing, 0) if left else (0, missing)
            return torch.nn.functional.pad(tensor, padding, value=value)

        columns = {key: [value for part in parts for value in part.columns[key]] for key in parts[0].columns}
        return Rollout(
            prompts=[prompt for part in parts for prompt in part.prompts],
            columns=columns,
            prompt_ids=torch.cat([pad(part.prompt_ids, prompt_length, pad_token_id, True) for part in parts]),
            prompt_mask=torch.cat([pad(part.prompt_mask, prompt_length, 0, True) for part in parts]),
            completion_ids=torch.cat(
                [pad(part.completion_ids, completion_length, pad_token_id, False) for part in parts]
            ),
            completion_mask=torch.cat([pad(part.completion_mask, completion_length, 0, False) for part in parts]),
            completions=[text for part in parts for text in part.completions],
        )


class PromptSampler:
    """Seeded, resumable order over the prompt dataset, sharded across processes.

    Epoch e uses the permutation drawn from seed + e; a position is (epoch, batch index), saved in checkpoints,
    so a resumed run sees exactly the prompts the uninterrupted run would have seen.
    """

    def __init__(self, size: int, per_device_batch: int, process_index: int, num_processes: int, seed: int):
        global_batch = per_device_batch * num_processes
        if size < global_batch:
            raise ValueError(f"the prompt dataset has {size} prompts, fewer than one global batch ({global_batch})")
        self.size, self.per_device_batch, self.global_batch = size, per_device_batch, global_batch
        self.process_index, self.seed = process_index, seed
        self.batches_per_epoch = size // global_batch
        # The last partial batch of each epoch is left out (logged: how many prompts that is).
        self.dropped_per_epoch = size - self.batches_per_epoch * global_batch
        if self.dropped_per_epoch:
            logger.warning(
                "%d of %d prompts per epoch are left out: they do not fill a whole batch of %d across processes",
                self.dropped_per_epoch,
                size,
                global_batch,
            )
        self.epoch, self.batch_index = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def next_indices(self) -> list[int]:
        if self.batch_index >= self.batches_per_epoch:
            self.epoch, self.batch_index = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        start = self.batch_index * self.global_batch + self.process_index * self.per_device_batch
        self.batch_index += 1
        return self._order[start : start + self.per_device_batch]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch_index": self.batch_index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch_index = state["epoch"], state["batch_index"]
        self._order = self._permutation(self.epoch)


class ScoreNormalizer:
    """Running (Welford) or fixed mean/std of reward scores; ``normalize`` maps scores to roughly unit scale."""

    def __init__(self, mode: str):
        self.mode = mode
        self.count, self.mean, self.m2 = 0, 0.0, 0.0
        self.frozen = False

    def update_from_processes(self, scores: torch.Tensor, valid: torch.Tensor, accelerator) -> None:
        """Update from every process's valid scores ([B] scores and [B] bool on each process)."""
        gathered = accelerator.gather(scores.to(accelerator.device)).cpu()
        gathered_valid = accelerator.gather(valid.to(accelerator.device)).cpu().bool()
        self.update(gathered[gathered_valid])

    def update(self, scores: torch.Tensor) -> None:
        if self.frozen:
            return
        for value in scores.double().tolist():
            self.count += 1
            delta = value - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (value - self.mean)
        if self.mode == "reference":
            self.frozen = True  # measured once on reference-policy samples, then fixed

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0

    def statistics(self) -> tuple[float, float] | None:
        """(mean, std) to normalise with (advantages.shape_scores); None when mode is 'none'."""
        return None if self.mode == "none" else (self.mean, self.std)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2, "frozen": self.frozen}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2, self.frozen = state["count"], state["mean"], state["m2"], state["frozen"]
