"""The tiny sorting task.

A user asks the assistant to sort a short list of digits: ``Human: sort 3 1 4 Assistant:`` and the right answer is
`` 1 3 4``. The demonstrations are deliberately imperfect (some copy the list unsorted, some ramble on after the
answer, some drop a number), so supervised fine-tuning learns the flaws too and RLHF has something left to fix.
The gold scorer knows the right answer and measures real quality; the reward model only sees preference pairs.
All text is generated here from a seed: nothing is copied from anywhere.
"""

from __future__ import annotations

import random
import re

DIGITS = [str(digit) for digit in range(10)]
MIN_LENGTH, MAX_LENGTH = 3, 5
# Share of each flaw among the supervised demonstrations, by list length; the rest are correct. The demonstrators
# grow lazy on longer lists: most 5-number demonstrations just copy the list, so a fine-tuned model copies too.
DEMO_FLAWS = {
    3: {"copy": 0.05, "ramble": 0.05, "drop": 0.0},
    4: {"copy": 0.20, "ramble": 0.10, "drop": 0.05},
    5: {"copy": 0.60, "ramble": 0.10, "drop": 0.05},
}
SPLIT_SEEDS = {"pretrain": 11, "sft": 22, "reward": 33, "ppo": 44, "eval": 55}
# Held-out eval prompts, kept out of every other split: 1000 keep the gold score's sampling noise near +-0.01
# (200 gave about +-0.02 on a PPO - SFT gain, as large as the differences the tiny task is meant to show).
EVAL_PROMPTS = 1000
# The pretraining text (the chat format with the digits left unsorted) avoids the first 200 of them, as when the eval
# set held 200: it never shows a sorted answer, so it cannot leak the task, and the tiny bases every figure was
# measured with stay the same.
PRETRAIN_EXCLUDED_EVAL_PROMPTS = 200
_PROMPT_PATTERN = re.compile(r"sort((?: \d)+)\s*Assistant:\s*$")


def make_prompt(numbers: list[str]) -> str:
    return f"Human: sort {' '.join(numbers)} Assistant:"


def target_answer(prompt: str) -> list[str]:
    """The correct answer (as a list of digit tokens) for a prompt of the task; raises ValueError otherwise."""
    match = _PROMPT_PATTERN.search(prompt)
    if match is None:
        raise ValueError(f"not a prompt of the tiny sorting task: {prompt!r}")
    return sorted(match.group(1).split())


def answer_tokens(completion: str) -> list[str]:
    """Words of a completion up to the next turn: the chat may continue with 'Human:' after an answer."""
    words = []
    for word in completion.split():
        if word in ("Human:", "Assistant:"):
            break
        words.append(word)
    return words


def gold_score(prompt: str, completion: str) -> float:
    """Quality of an answer in [0, 1]: 1 for the exact sorted list, otherwise the share of positions right.

    Positions are counted over the longer of answer and target, so rambling on or dropping numbers costs points.
    """
    target = target_answer(prompt)
    answer = answer_tokens(completion)
    if answer == target:
        return 1.0
    matches = sum(1 for got, want in zip(answer, target) if got == want)
    return matches / max(len(answer), len(target))


def as_text_prompt(prompt: str | list[dict]) -> str:
    """A prompt in the task's text form; a conversational prompt (message list) is read from its last user turn."""
    if isinstance(prompt, str):
        return prompt
    user_turns = [message["content"] for message in prompt if message.get("role") == "user"]
    if not user_turns:
        raise ValueError(f"not a prompt of the tiny sorting task (no user turn): {prompt!r}")
    return f"Human: {user_turns[-1].strip()} Assistant:"


def as_text_completion(completion: str | list[dict]) -> str:
    """A completion in the task's text form; a conversational one (assistant messages) is their joined content."""
    if isinstance(completion, str):
        return completion
    return " " + " ".join(message["content"].strip() for message in completion if message.get("role") == "assistant")


def gold_scores(prompts: list, completions: list, **_: object) -> list[float]:
    """Batch form with the signature of a reward function (prompts, completions, **dataset columns); prompts and
    completions may be strings or, for conversational data, message lists (TRL's conversational format)."""
    return [
        gold_score(as_text_prompt(prompt), as_text_completion(completion))
        for prompt, completion in zip(prompts, completions)
    ]


def _random_numbers(rng: random.Random) -> list[str]:
    return [rng.choice(DIGITS) for _ in range(rng.randint(MIN_LENGTH, MAX_LENGTH))]


def _flawed_answer(numbers: list[str], flaw: str, rng: random.Random) -> list[str]:
    correct = sorted(numbers)
    if flaw == "copy":
        # Lazy: the list as given. Reshuffle an already sorted input so the flaw is real.
        answer = list(numbers)
        while answer == correct and len(set(numbers)) > 1:
            rng.shuffle(answer)
        return answer
    if flaw == "ramble":
        return correct + [rng.choice(DIGITS) for _ in range(rng.randint(1, 3))]
    if flaw == "drop":
        answer = list(correct)
        del answer[rng.randrange(len(answer))]
        return answer
    if flaw == "stop":  # gives up early; possibly says nothing at all
        return sorted(numbers)[: rng.randrange(len(numbers) - 1)]
    if flaw == "random":
        return [rng.choice(DIGITS) for _ in range(rng.randint(1, MAX_LENGTH + 1))]
    if flaw == "substitute":  # looks sorted, but a number was made up (often off by one: the hardest to spot)
        answer = sorted(numbers)
        position = rng.randrange(len(answer))
        value = int(answer[position])
        near = [str(value + step) for step in (-1, 1) if 0 <= value + step <= 9]
        others = [digit for digit in DIGITS if digit != answer[position]]
        answer[position] = rng.choice(near) if rng.random() < 0.5 else rng.choice(others)
        return sorted(answer)
    if flaw == "swap":
        answer = list(correct)
        first = rng.randrange(len(answer) - 1)
        answer[first], answer[first + 1] = answer[first + 1], answer[first]
        return answer
    raise ValueError(f"unknown flaw {flaw!r}")


def _completion(answer: list[str]) -> str:
    return " " + " ".join(answer)


def _prompt_stream(split: str, excluded: set[str]):
    rng = random.Random(SPLIT_SEEDS[split])
    while True:
        numbers = _random_numbers(rng)
        prompt = make_prompt(numbers)
        if prompt not in excluded:
            yield numbers, prompt, rng


def _eval_prompts(count: int) -> set[str]:
    prompts = set()
    for _, prompt, _ in _prompt_stream("eval", set()):
        prompts.add(prompt)
        if len(prompts) >= count:
            return prompts


def make_records(split: str, count: int, eval_count: int = EVAL_PROMPTS) -> list[dict]:
    """Generate ``count`` records of one split; every split except ``eval`` avoids the held-out eval prompts
    (``pretrain`` the first PRETRAIN_EXCLUDED_EVAL_PROMPTS of them).

    - ``pretrain``: {"text"}: the chat format with the prompt's digits in random order (format, not skill).
    - ``sft``: {"prompt", "completion"}: demonstrations, a share of them flawed (see DEMO_FLAWS).
    - ``reward``: {"prompt", "chosen", "rejected"}: the better answer by gold score is chosen.
    - ``ppo``: {"prompt"}; ``eval``: {"prompt"}: held-out prompts for measuring gold score.
    """
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLIT_SEEDS)}")
    if split == "pretrain":
        eval_count = min(eval_count, PRETRAIN_EXCLUDED_EVAL_PROMPTS)
    excluded = set() if split == "eval" else _eval_prompts(eval_count)
    records = []
    for numbers, prompt, rng in _prompt_stream(split, excluded):
        if len(records) >= count:
            break
        if split == "pretrain":
            shuffled = list(numbers)
            rng.shuffle(shuffled)
            records.append({"text": prompt + _completion(shuffled)})
        elif split == "sft":
            draw, answer = rng.random(), sorted(numbers)
            for flaw, share in DEMO_FLAWS[len(numbers)].items():
                if draw < share:
                    answer = _flawed_answer(numbers, flaw, rng)
                    break
                draw -= share
            records.append({"prompt": prompt, "completion": _completion(answer)})
        elif split == "reward":
            records.append(_preference_record(numbers, prompt, rng))
        else:
            records.append({"prompt": prompt})
    return records


def _preference_record(numbers: list[str], prompt: str, rng: random.Random) -> dict:
    """A pair of answers with different gold scores; 70% of pairs put the correct answer against a flawed one.
    The flaws cover degenerate answers too (empty, cut short, random), so the reward model has seen them."""
    flaws = ["copy", "ramble", "drop", "swap", "stop", "random", "substitute", "substitute", "substitute"]
    while True:
        first = sorted(numbers) if rng.random() < 0.7 else _flawed_answer(numbers, rng.choice(flaws), rng)
        second = _flawed_answer(numbers, rng.choice(flaws), rng)
        first_text, second_text = _completion(first), _completion(second)
        first_score, second_score = gold_score(prompt, first_text), gold_score(prompt, second_text)
        if first_score != second_score:
            break
    if first_score < second_score:
        first_text, second_text = second_text, first_text
    return {"prompt": prompt, "chosen": first_text, "rejected": second_text}
