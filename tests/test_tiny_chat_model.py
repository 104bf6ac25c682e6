"""The tiny chat models that stand in for users' Llama- and Qwen-style models."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_trl.models import resolve_model_name
from rlhf_trl.tiny import task
from rlhf_trl.tiny.chat_model import build_chat_tokenizer, conversational_records, to_messages


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_tokenizer_is_byte_level_bpe_with_a_chat_template_and_separate_pad(family):
    tokenizer = build_chat_tokenizer(family)
    text = tokenizer.apply_chat_template(to_messages("Human: sort 3 1 4 Assistant:", " 1 3 4"), tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte-level: exact round trip, markers included
    assert any(token.startswith("Ġ") for token in tokenizer.convert_ids_to_tokens(ids))  # byte-level pieces
    assert tokenizer.pad_token_id not in (None, tokenizer.eos_token_id)
    assert text.endswith(tokenizer.eos_token) or text.endswith(tokenizer.eos_token + "\n")


def test_llama_style_adds_bos_both_ways_and_qwen2_style_has_none():
    llama = build_chat_tokenizer("llama")
    rendered = llama.apply_chat_template([{"role": "user", "content": "sort 1 2 3"}], tokenize=False)
    tokens = llama.convert_ids_to_tokens(llama(rendered)["input_ids"])
    assert tokens[:2] == [llama.bos_token, llama.bos_token]  # the trap: template BOS + tokenizer BOS
    qwen2 = build_chat_tokenizer("qwen2")
    assert qwen2.bos_token is None


@pytest.mark.parametrize("fixture", ["tiny_chat_dir", "tiny_qwen2_chat_dir"])
def test_pretrained_chat_model_answers_in_the_chat_format(fixture, request):
    path = request.getfixturevalue(fixture)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    prompt = tokenizer.apply_chat_template(
        to_messages("Human: sort 3 1 4 Assistant:"), tokenize=False, add_generation_prompt=True
    )
    encoded = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
    output = model.generate(**encoded, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    assert output[0, -1].item() in (tokenizer.eos_token_id, tokenizer.pad_token_id)  # it learnt to end its turn
    assert answer.split() and all(word in task.DIGITS for word in answer.split())  # digits, not format words


def test_conversational_records_and_gold_score_accept_message_lists():
    pair = conversational_records("reward", 1)[0]
    assert pair["prompt"][0]["role"] == "user" and pair["chosen"][0]["role"] == "assistant"
    chosen, rejected = task.gold_scores([pair["prompt"]] * 2, [pair["chosen"], pair["rejected"]])
    assert chosen > rejected
    text_prompt = task.as_text_prompt(pair["prompt"])
    assert task.gold_scores([text_prompt], [" " + pair["chosen"][0]["content"]]) == [chosen]


def test_tiny_chat_names_resolve_to_built_models(tmp_path, monkeypatch):
    import rlhf_trl.tiny.chat_model as chat_model

    monkeypatch.setattr(chat_model, "CACHE_ROOT", tmp_path)
    path = resolve_model_name("tiny-qwen2-chat")
    assert path == str(tmp_path / "tiny-qwen2-chat")
    assert AutoTokenizer.from_pretrained(path).chat_template
