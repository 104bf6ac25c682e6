"""Record kinds and the rules every record must follow.

A *record* is one dict in one of TRL's standard formats. Raw records (from a file or a dataset adapter) go through
``normalize_record``, which checks them and returns the canonical form, or raises ``RecordProblem`` saying which
field broke which rule. ``step_record`` then shapes a canonical record for step 1, 2 or 3.

Kinds (TRL's dataset formats) and the steps that can use them (``STEPS_USING``):
- ``text``      {"text"}: language modelling; step 1.
- ``conversation`` {"messages"}: conversational language modelling; step 1.
- ``sft``       {"prompt", "completion"}: steps 1 and 3 (its prompt).
- ``pairwise``  {"prompt", "chosen", "rejected"}, or implicit prompt {"chosen", "rejected"}: steps 1 (prompt +
  chosen), 2 and 3 (prompt).
- ``kwise``     {"prompt", "responses" best-first, optional "scores"}: steps 1 (best answer), 2 and 3.
- ``prompt_only`` {"prompt", ...}: step 3.
- ``unpaired_preference`` {"prompt", "completion", "label"}: step 3 (its prompt); no step learns from its answers.
When every step is given the same datasets list (DS-Chat's way), a dataset feeds the steps of ``STEPS_FED``
instead: SFT data only step 1, as DS-Chat's SFT-only datasets.
Text fields are strings; conversational fields are lists of ``{"role", "content"}`` messages. Prompts and the
answers a model learns to give (chosen, completion, the best of a ranking) must not be blank; a rejected or
lower-ranked answer may be (saying nothing is a real way to answer badly).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

from .errors import DataValidationError, RecordProblem

PAIRWISE, KWISE, SFT, CONVERSATION, PROMPT_ONLY = "pairwise", "kwise", "sft", "conversation", "prompt_only"
TEXT, UNPAIRED = "text", "unpaired_preference"
# Richest first: breaks ties when a file's records disagree about their kind.
KINDS = (KWISE, PAIRWISE, CONVERSATION, UNPAIRED, SFT, PROMPT_ONLY, TEXT)
STEPS_USING = {
    PAIRWISE: (1, 2, 3),
    KWISE: (1, 2, 3),
    SFT: (1, 3),
    CONVERSATION: (1,),
    PROMPT_ONLY: (3,),
    TEXT: (1,),
    UNPAIRED: (3,),
}
# DS-Chat's rule for one datasets list given to every step.
STEPS_FED = {
    PAIRWISE: (1, 2, 3),
    KWISE: (1, 2, 3),
    SFT: (1,),
    CONVERSATION: (1,),
    PROMPT_ONLY: (3,),
    TEXT: (1,),
    UNPAIRED: (3,),
}
# How the formats are named to users.
FORMAT_NAMES = {
    TEXT: "language modelling (text)",
    UNPAIRED: "unpaired preference (prompt, completion, label)",
    CONVERSATION: "conversational language modelling (messages)",
    SFT: "prompt/completion",
    PAIRWISE: "preference (prompt, chosen, rejected)",
    KWISE: "ranked (prompt, responses, scores)",
    PROMPT_ONLY: "prompt-only",
}
EXPECTED_FORMATS = (
    "text; messages; prompt+completion; prompt+chosen+rejected or chosen+rejected (implicit prompt); "
    "prompt+responses(+scores); prompt"
)
STANDARD_FIELDS = ("prompt", "chosen", "rejected", "completion", "messages", "responses", "scores", "text")
ROLES = ("system", "user", "assistant", "tool")
ANSWER_MARKER = "Assistant:"


def detect_kind(raw: object) -> str | None:
    """The kind a raw record's keys announce, or None for a non-dict or a dict without known keys."""
    if not isinstance(raw, dict):
        return None
    if "responses" in raw:
        return KWISE
    if "chosen" in raw or "rejected" in raw:
        return PAIRWISE
    if "messages" in raw:
        return CONVERSATION
    if "completion" in raw and "label" in raw:
        return UNPAIRED  # a completion labelled good or bad: not a demonstration to learn from
    if "completion" in raw:
        return SFT
    if "prompt" in raw:
        return PROMPT_ONLY
    if "text" in raw:
        return TEXT
    return None


def majority_kind(raw_records: Iterable[object], source: str) -> str:
    """The kind most records of a source announce; records of other kinds then fail validation one by one."""
    counts, columns = Counter(), set()
    for raw in raw_records:
        kind = detect_kind(raw)
        if kind is not None:
            counts[kind] += 1
        elif isinstance(raw, dict) and len(columns) < 50:
            columns.update(raw)
    if not counts:
        found = ", ".join(sorted(map(str, columns))) or "none"
        raise DataValidationError(
            f"{source}: unknown dataset format (columns: {found}); expected one of TRL's formats: "
            f"{EXPECTED_FORMATS} (select or rename columns with ',columns=a+b' or YAML columns: [a, b])",
            source=source,
            reason="no record has a known field",
        )
    return max(KINDS, key=lambda kind: (counts[kind], -KINDS.index(kind)))


def is_conversational(record: dict) -> bool:
    """True when the record's prompt (or messages) is a list of chat messages."""
    value = record.get("messages", record.get("prompt"))
    return isinstance(value, list)


def check_text(raw: dict, name: str, allow_empty: bool = False) -> str:
    """A string; blank only when ``allow_empty`` (a rejected answer may say nothing: that is what makes it bad)."""
    value = raw.get(name)
    if value is None:
        raise RecordProblem(name, "missing field")
    if not isinstance(value, str):
        raise RecordProblem(name, "not a string", f"got {type(value).__name__}")
    if not value.strip() and not allow_empty:
        raise RecordProblem(name, "empty string")
    return value


def check_messages(raw: dict, name: str, allow_empty: bool = False) -> list[dict]:
    """A non-empty list of {"role", "content"} dicts with known roles and string contents, non-blank unless
    ``allow_empty`` (then only assistant messages may be blank)."""
    value = raw.get(name)
    if value is None:
        raise RecordProblem(name, "missing field")
    if not isinstance(value, list) or not value:
        raise RecordProblem(name, "invalid messages", "expected a non-empty list of {role, content}")
    messages = []
    for position, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            raise RecordProblem(name, "invalid messages", f"message {position} is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise RecordProblem(name, "invalid messages", f"message {position} has role {role!r}")
        if not isinstance(content, str):
            raise RecordProblem(name, "invalid messages", f"message {position} has no text content")
        if not content.strip() and not (allow_empty and role == "assistant"):
            raise RecordProblem(name, "invalid messages", f"message {position} is empty")
        messages.append({"role": role, "content": content})
    return messages


def check_value(raw: dict, name: str, conversational: bool, allow_empty: bool = False) -> str | list[dict]:
    if conversational:
        return check_messages(raw, name, allow_empty)
    return check_text(raw, name, allow_empty)


def _prompt_length(prompt: str | list[dict]) -> int:
    return len(prompt) if isinstance(prompt, str) else sum(len(message["content"]) for message in prompt)


def _check_prompt(raw: dict, max_prompt_chars: int | None) -> str | list[dict]:
    conversational = isinstance(raw.get("prompt"), list)
    prompt = check_value(raw, "prompt", conversational)
    if max_prompt_chars is not None and _prompt_length(prompt) > max_prompt_chars:
        raise RecordProblem("prompt", "prompt too long", f"{_prompt_length(prompt)} > {max_prompt_chars} characters")
    return prompt


def _split_implicit_prompt(raw: dict) -> dict:
    """TRL's implicit-prompt pairs: chosen and rejected hold the whole conversation; the shared start is the prompt.

    Text is cut after the last 'Assistant:' of the shared start, or else before the first differing word; message
    lists after the last shared message.
    """
    chosen, rejected = raw.get("chosen"), raw.get("rejected")
    if isinstance(chosen, str) and isinstance(rejected, str):
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        cut = chosen.rfind(ANSWER_MARKER, 0, shared)
        if cut >= 0:
            cut += len(ANSWER_MARKER)
        elif shared < min(len(chosen), len(rejected)):
            # No transcript markers: the shared words are the prompt; the answers start at the space before the
            # first word that differs (so a prompt never ends inside a word).
            cut = max(chosen.rfind(" ", 0, shared + 1), chosen.rfind("\n", 0, shared + 1))
            cut = cut if cut > 0 and chosen[:cut].strip() else -1
        if cut >= 0:
            return {**raw, "prompt": chosen[:cut], "chosen": chosen[cut:], "rejected": rejected[cut:]}
    elif isinstance(chosen, list) and isinstance(rejected, list):
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        if shared:
            return {**raw, "prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}
    raise RecordProblem("prompt", "missing field")


def _check_ranking(raw: dict, conversational: bool) -> tuple[list, list[float]]:
    """Responses sorted best-first with their scores; without scores the list order is the ranking."""
    responses = raw.get("responses")
    if responses is None:
        raise RecordProblem("responses", "missing field")
    if not isinstance(responses, list) or len(responses) < 2:
        raise RecordProblem("responses", "invalid ranking", "expected a list of at least two answers")
    # Blank answers are allowed below the top of the ranking, like a blank rejected answer.
    checked = [
        check_value({"responses": answer}, "responses", conversational, allow_empty=True) for answer in responses
    ]
    if len({repr(answer) for answer in checked}) != len(checked):
        raise RecordProblem("responses", "invalid ranking", "the same answer appears twice")
    scores = raw.get("scores")
    if scores is None:
        # Best-first order given: the first answer gets the highest score.
        scores = [float(len(checked) - 1 - position) for position in range(len(checked))]
    elif not isinstance(scores, list) or len(scores) != len(checked):
        raise RecordProblem("scores", "invalid ranking", "expected one number per response")
    elif any(isinstance(score, bool) or not isinstance(score, (int, float)) for score in scores):
        raise RecordProblem("scores", "invalid ranking", "scores must be numbers")
    elif not all(math.isfinite(score) for score in scores):
        raise RecordProblem("scores", "invalid ranking", "scores must be finite")
    elif len(set(scores)) < 2:
        raise RecordProblem("scores", "invalid ranking", "all scores are equal: no preference to learn")
    order = sorted(range(len(checked)), key=lambda position: -scores[position])  # stable: ties keep their order
    ranked, ranked_scores = [checked[position] for position in order], [float(scores[position]) for position in order]
    for answer, score in zip(ranked, ranked_scores):
        if score == ranked_scores[0] and not _has_text(answer):
            raise RecordProblem("responses", "empty string", "a best-ranked answer is empty")
    return ranked, ranked_scores


def _has_text(answer: str | list[dict]) -> bool:
    if isinstance(answer, str):
        return bool(answer.strip())
    return any(message["content"].strip() for message in answer)


def _extras(raw: dict) -> dict:
    return {key: value for key, value in raw.items() if key not in STANDARD_FIELDS}


def normalize_record(raw: object, kind: str, max_prompt_chars: int | None = None) -> dict:
    """Check ``raw`` against the rules of ``kind`` and return the canonical record (extra columns kept).

    Raises ``RecordProblem`` for the first broken rule.
    """
    if not isinstance(raw, dict):
        raise RecordProblem(None, "not an object", f"got {type(raw).__name__}")
    if kind == TEXT:
        return {"text": check_text(raw, "text"), **_extras(raw)}
    if kind == CONVERSATION:
        messages = check_messages(raw, "messages")
        if not any(message["role"] == "assistant" for message in messages):
            raise RecordProblem("messages", "invalid messages", "no assistant message to learn from")
        return {"messages": messages, **_extras(raw)}
    if kind == PAIRWISE and "prompt" not in raw and "chosen" in raw and "rejected" in raw:
        raw = _split_implicit_prompt(raw)
    prompt = _check_prompt(raw, max_prompt_chars)
    conversational = isinstance(prompt, list)
    if kind == PAIRWISE:
        chosen = check_value(raw, "chosen", conversational)
        rejected = check_value(raw, "rejected", conversational, allow_empty=True)
        if chosen == rejected:
            raise RecordProblem("rejected", "chosen equals rejected")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **_extras(raw)}
    if kind == KWISE:
        responses, scores = _check_ranking(raw, conversational)
        return {"prompt": prompt, "responses": responses, "scores": scores, **_extras(raw)}
    if kind == SFT:
        return {"prompt": prompt, "completion": check_value(raw, "completion", conversational), **_extras(raw)}
    if kind == PROMPT_ONLY:
        return {"prompt": prompt, **_extras(raw)}
    if kind == UNPAIRED:
        return {"prompt": prompt, **{key: value for key, value in _extras(raw).items() if key != "label"}}
    raise ValueError(f"unknown record kind {kind!r}")


def step_record(record: dict, kind: str, step: int) -> dict:
    """Shape a canonical record of ``kind`` for ``step``; callers check ``step in STEPS_FED[kind]`` first.

    Step 1 learns the preferred answer (DS-Chat trains SFT on prompt + chosen); step 3 keeps extra columns
    for reward functions; steps 1 and 2 keep only the fields their trainers read.
    """
    if step == 1:
        if kind == TEXT:
            return {"text": record["text"]}
        if kind == CONVERSATION and "messages" in record:  # (record_format="text" makes it prompt/completion)
            return {"messages": record["messages"]}
        if kind == PAIRWISE:
            return {"prompt": record["prompt"], "completion": record["chosen"]}
        if kind == KWISE:
            return {"prompt": record["prompt"], "completion": record["responses"][0]}
        return {"prompt": record["prompt"], "completion": record["completion"]}
    if step == 2:
        if kind == KWISE:
            return {"prompt": record["prompt"], "responses": record["responses"], "scores": record["scores"]}
        return {"prompt": record["prompt"], "chosen": record["chosen"], "rejected": record["rejected"]}
    if step == 3:
        return {"prompt": record["prompt"], **_extras(record)}
    raise ValueError(f"step must be 1, 2 or 3, got {step}")


def pair_to_ranking(record: dict) -> dict:
    """A step-2 pair as a two-answer ranking, so pairs and rankings can share one dataset."""
    return {"prompt": record["prompt"], "responses": [record["chosen"], record["rejected"]], "scores": [1.0, 0.0]}


def messages_to_prompt_completion(record: dict) -> dict:
    """Step-1 {"messages"} as conversational prompt/completion, cut before the last assistant message."""
    messages = record["messages"]
    last = max(position for position, message in enumerate(messages) if message["role"] == "assistant")
    if last == 0:
        raise RecordProblem("messages", "invalid messages", "the assistant speaks first: no prompt")
    return {"prompt": messages[:last], "completion": [messages[last]]}
