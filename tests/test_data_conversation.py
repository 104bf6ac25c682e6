"""Transcripts <-> chat messages, and the record_format option."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_trl.data import (
    DataArguments,
    DataValidationError,
    load_step_datasets,
    messages_to_transcript,
    tiny_sort,
    transcript_to_messages,
)


def test_multi_turn_transcript_to_messages():
    text = "Human: sort 3 1 Assistant: 1 3 Human: and 2 2 1? Assistant:"
    assert transcript_to_messages(text) == [
        {"role": "user", "content": "sort 3 1"},
        {"role": "assistant", "content": "1 3"},
        {"role": "user", "content": "and 2 2 1?"},
    ]
    anthropic_style = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: A joke, please."
    assert [message["content"] for message in transcript_to_messages(anthropic_style)] == [
        "Hi there",
        "Hello! How can I help?",
        "A joke, please.",
    ]
    assert transcript_to_messages("just a question") == [{"role": "user", "content": "just a question"}]
    # A marker glued to a word is text, not a turn.
    assert transcript_to_messages("Human: the NonHuman: label Assistant: ok")[0]["content"] == "the NonHuman: label"
    assert transcript_to_messages("System: be brief Human: hi")[0] == {"role": "system", "content": "be brief"}


def test_messages_to_transcript():
    messages = [
        {"role": "user", "content": "sort 3 1"},
        {"role": "assistant", "content": "1 3"},
        {"role": "user", "content": "again"},
    ]
    assert messages_to_transcript(messages) == "Human: sort 3 1 Assistant: 1 3 Human: again"
    assert messages_to_transcript(messages, add_generation_prompt=True).endswith("Human: again Assistant:")
    assert messages_to_transcript(messages[:2], separator="\n\n") == "Human: sort 3 1\n\nAssistant: 1 3"
    with pytest.raises(ValueError, match="tool"):
        messages_to_transcript([{"role": "tool", "content": "42"}])


words = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Zs", "Zl", "Zp"]), min_size=1, max_size=8
).filter(lambda word: not word.endswith(":"))
contents = st.lists(words, min_size=1, max_size=5).map(" ".join)
messages_strategy = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]), "content": contents}),
    min_size=1,
    max_size=6,
).filter(lambda messages: messages[0]["role"] != "assistant" or len(messages) > 1 or True)


@settings(max_examples=200, deadline=None, database=None)
@given(messages=messages_strategy, separator=st.sampled_from([" ", "\n\n", "\n"]))
def test_messages_round_trip(messages, separator):
    transcript = messages_to_transcript(messages, separator=separator)
    assert transcript_to_messages(transcript) == messages
    prompt = messages_to_transcript(messages, add_generation_prompt=True, separator=separator)
    assert transcript_to_messages(prompt) == messages  # the answer cue adds no message


@settings(max_examples=200, deadline=None, database=None)
@given(messages=messages_strategy)
def test_transcript_round_trip(messages):
    transcript = messages_to_transcript(messages)
    assert messages_to_transcript(transcript_to_messages(transcript)) == transcript


@pytest.fixture
def small_tiny_sizes(monkeypatch):
    for step, size in {1: 12, 2: 12, 3: 12}.items():
        monkeypatch.setitem(tiny_sort.TINY_SIZES, step, size)


def test_tiny_sort_as_conversational_records(small_tiny_sizes):
    from trl.data_utils import is_conversational

    args = DataArguments(datasets=["tiny-sort"], record_format="conversational")
    first = load_step_datasets(args, 1)
    row = first.train[0]
    assert is_conversational(row)
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"].startswith("sort ")
    assert row["completion"] == [{"role": "assistant", "content": row["completion"][0]["content"]}]
    second = load_step_datasets(args, 2)
    assert second.eval[0]["chosen"][0]["role"] == "assistant"
    third = load_step_datasets(args, 3)
    assert third.train[0]["prompt"][-1]["role"] == "user"


def test_messages_file_as_text_records(tmp_path):
    conversation = [{"role": "user", "content": "sort 2 1"}, {"role": "assistant", "content": "1 2"}]
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": conversation}) + "\n", encoding="utf-8")
    kept = load_step_datasets(DataArguments(datasets=[str(path)]), 1)
    assert kept.train[0] == {"messages": conversation}
    as_text = load_step_datasets(DataArguments(datasets=[str(path)], record_format="text"), 1)
    assert as_text.train[0] == {"prompt": "Human: sort 2 1 Assistant:", "completion": " 1 2"}


def test_text_and_chat_sources_do_not_mix_silently(tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
        + "\n",
        encoding="utf-8",
    )
    text = tmp_path / "text.jsonl"
    text.write_text(json.dumps({"prompt": "Human: hey Assistant:", "completion": " yo"}) + "\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match="mixes text records .* conversational"):
        load_step_datasets(DataArguments(datasets=[str(chat), str(text)]), 1)
    mixed = load_step_datasets(DataArguments(datasets=[str(chat), str(text)], record_format="conversational"), 1)
    rows = sorted(mixed.train, key=lambda row: row["prompt"][0]["content"])
    assert rows[0]["prompt"] == [{"role": "user", "content": "hey"}]
    assert rows[1] == {
        "prompt": [{"role": "user", "content": "hi"}],
        "completion": [{"role": "assistant", "content": "hello"}],
    }


def test_conversational_pairs_with_implicit_prompt(tmp_path):
    shared = [{"role": "user", "content": "name a colour"}]
    records = [
        {
            "chosen": [*shared, {"role": "assistant", "content": f"blue {index}"}],
            "rejected": [*shared, {"role": "assistant", "content": f"no {index}"}],
        }
        for index in range(3)
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    loaded = load_step_datasets(DataArguments(datasets=[str(path)], data_split="0,1,0", eval_split_ratio=0), 2)
    row = loaded.train[0]
    assert row["prompt"] == shared and row["chosen"][0]["role"] == "assistant" and len(row["rejected"]) == 1
    text_path = tmp_path / "text_pairs.jsonl"
    text_path.write_text(
        json.dumps({"chosen": "Human: hi Assistant: hello", "rejected": "Human: hi Assistant: go"}) + "\n",
        encoding="utf-8",
    )
    text_row = load_step_datasets(DataArguments(datasets=[str(text_path)], data_split="0,1,0"), 2).train[0]
    assert text_row == {"prompt": "Human: hi Assistant:", "chosen": " hello", "rejected": " go"}
