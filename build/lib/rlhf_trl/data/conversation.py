"""Conversions between DS-Chat transcripts (``Human: ... Assistant: ...``) and TRL's chat messages.

DS-Chat keeps a whole conversation in one string; a prompt ends with ``Assistant:`` and the answer follows it.
TRL's conversational format is a list of ``{"role", "content"}`` messages. Both directions are here, for single
strings and for whole records.
"""

from __future__ import annotations

import re

from .errors import RecordProblem

SPEAKERS = {"user": "Human", "assistant": "Assistant", "system": "System"}
ROLES_BY_SPEAKER = {speaker: role for role, speaker in SPEAKERS.items()}
# A speaker marker starts the text or follows whitespace, so "NonHuman:" inside a sentence is not a turn.
_MARKER = re.compile(r"(?<!\S)(Human|Assistant|System):")
_TEXT_FIELDS = ("prompt", "completion", "chosen", "rejected")


def transcript_to_messages(text: str) -> list[dict]:
    """Split a transcript into messages: ``"Human: hi Assistant: hello"`` -> user "hi", assistant "hello".

    Turn contents are stripped. A final empty ``Assistant:`` (the cue to answer) adds no message. Text before the
    first marker, or a text without any marker, is a user message. A marker is ``Human:``, ``Assistant:`` or
    ``System:`` at the start or after whitespace, so a message that itself contains one cannot round-trip.
    """
    messages = []
    pieces = _MARKER.split(text)
    # pieces = [before, speaker, content, speaker, content, ...]
    leading = pieces[0].strip()
    if leading:
        messages.append({"role": "user", "content": leading})
    for index in range(1, len(pieces), 2):
        role, content = ROLES_BY_SPEAKER[pieces[index]], pieces[index + 1].strip()
        is_answer_cue = index == len(pieces) - 2 and role == "assistant" and not content
        if not is_answer_cue:
            messages.append({"role": role, "content": content})
    return messages


def messages_to_transcript(messages: list[dict], add_generation_prompt: bool = False, separator: str = " ") -> str:
    """Join messages into ``Human: ... Assistant: ...``; ``add_generation_prompt`` appends the ``Assistant:`` cue.

    ``separator`` goes between turns (DS-Chat's Anthropic-style data uses ``"\\n\\n"``). Raises ValueError for a
    role without a transcript speaker (e.g. ``tool``).
    """
    turns = []
    for message in messages:
        speaker = SPEAKERS.get(message.get("role"))
        if speaker is None:
            raise ValueError(f"role {message.get('role')!r} has no transcript speaker; known: {sorted(SPEAKERS)}")
        turns.append(f"{speaker}: {message['content'].strip()}")
    if add_generation_prompt:
        turns.append("Assistant:")
    return separator.join(turns)


def _answer_to_messages(text: str) -> list[dict]:
    # An answer continues after the prompt's "Assistant:" cue and may run on into further turns.
    if not text.strip():
        return [{"role": "assistant", "content": ""}]  # a blank (rejected) answer stays one, blank, message
    return transcript_to_messages("Assistant: " + text)


def _answer_to_text(messages: list[dict]) -> str:
    transcript = messages_to_transcript(messages)
    prefix = "Assistant:"
    if not transcript.startswith(prefix):
        raise ValueError("a conversational answer must start with an assistant message")
    return transcript[len(prefix) :]


def record_to_conversational(record: dict) -> dict:
    """Turn the text fields of a canonical record into messages; conversational records come back unchanged."""
    if isinstance(record.get("prompt", record.get("messages")), list):
        return record
    converted = dict(record)
    if "prompt" in record:
        converted["prompt"] = transcript_to_messages(record["prompt"])
    for name in ("completion", "chosen", "rejected"):
        if name in record:
            converted[name] = _answer_to_messages(record[name])
    if "responses" in record:
        converted["responses"] = [_answer_to_messages(answer) for answer in record["responses"]]
    _check_nonempty_turns(converted)
    return converted


def record_to_text(record: dict) -> dict:
    """Turn the messages of a canonical record into transcripts; text records come back unchanged."""
    if not isinstance(record.get("prompt", record.get("messages")), list):
        return record
    converted = dict(record)
    try:
        if "messages" in record:
            messages = record["messages"]
            last = max(position for position, message in enumerate(messages) if message["role"] == "assistant")
            converted.pop("messages")
            converted["prompt"] = messages_to_transcript(messages[:last], add_generation_prompt=True)
            converted["completion"] = _answer_to_text(messages[last:])
        if "prompt" in record:
            converted["prompt"] = messages_to_transcript(record["prompt"], add_generation_prompt=True)
        for name in ("completion", "chosen", "rejected"):
            if name in record:
                converted[name] = _answer_to_text(record[name])
        if "responses" in record:
            converted["responses"] = [_answer_to_text(answer) for answer in record["responses"]]
    except ValueError as error:
        raise RecordProblem(None, "invalid messages", str(error)) from error
    return converted


def _check_nonempty_turns(record: dict) -> None:
    """Turns split out of a transcript must have text, except blank answers where blank answers are allowed."""
    names = ("prompt", "completion", "chosen", "rejected", "messages")
    lists = [(name, record[name]) for name in names if name in record]
    lists.extend(("responses", answer) for answer in record.get("responses", []))
    for name, messages in lists:
        blank_allowed = name in ("rejected", "responses")
        if not messages or any(not message["content"] and not blank_allowed for message in messages):
            raise RecordProblem(name, "invalid messages", "a turn of the transcript is empty")
