"""Chat CLI: answers are cut at end-of-text and at the next user turn, history and `clear` behave, the chat template
is used when the tokenizer has one, and the command reads stdin until `quit`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig, OPTForCausalLM

from rlhf_trl.generation import GenerationSettings, Generator, user_turn_marker
from rlhf_trl.inference.chat import ChatSession, main, run_conversation
from rlhf_trl.tiny.model import build_config, build_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_WITH_MARKERS = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|user|> {{ message['content'] }} "
    "{% else %}<|assistant|> {{ message['content'] }} <eos> {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


class ScriptedModel(torch.nn.Module):
    """Stands in for a causal LM: ``generate`` appends a fixed token script and records the prompts it saw."""

    def __init__(self, tokenizer, script: str, max_positions: int = 64):
        super().__init__()
        self.config = build_config(tokenizer)
        self.config.max_position_embeddings = max_positions
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the session a device to read
        self.tokenizer = tokenizer
        self.script = torch.tensor(tokenizer.encode(script, add_special_tokens=False))
        self.seen_prompts: list[list[str]] = []

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, eos_token_id, **_):
        rows = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask)]
        self.seen_prompts.append([self.tokenizer.decode(row) for row in rows])
        new_tokens = self.script[:max_new_tokens].unsqueeze(0).expand(input_ids.shape[0], -1)
        return torch.cat([input_ids, new_tokens], dim=1)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised tiny OPT model and its tokenizer saved like a checkpoint."""
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = OPTForCausalLM(build_config(tokenizer))
    folder = tmp_path_factory.mktemp("chat-model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_answer_stops_at_end_of_text_and_next_user_turn():
    tokenizer = build_tokenizer()
    session = ChatSession(ScriptedModel(tokenizer, "1 3 4 Human: sort 2 <eos> <pad>"), tokenizer)
    assert session.reply("sort 3 1 4") == "1 3 4"

    session = ChatSession(ScriptedModel(tokenizer, "1 3 <eos> 9 9 Human:"), tokenizer)
    assert session.reply("sort 3 1") == "1 3"


def test_completion_mask_covers_tokens_up_to_first_eos():
    tokenizer = build_tokenizer()
    generator = Generator(ScriptedModel(tokenizer, "1 2 <eos> 5 6"), tokenizer, GenerationSettings(max_new_tokens=5))
    batch = generator.generate(["Human: sort 2 1 Assistant:"])
    assert batch.completion_mask.tolist() == [[1, 1, 1, 0, 0]]
    pad = tokenizer.pad_token_id
    assert batch.completion_ids[0, 3:].tolist() == [pad, pad]  # tokens after the end are replaced by padding
    # The answer is read as it follows the prompt: its leading space stays, so prompt + answer is the whole text.
    assert batch.texts == [" 1 2"]


def test_turn_end_token_of_generation_config_also_ends_the_answer():
    tokenizer = build_tokenizer()
    tokenizer.add_tokens(["<|end|>"], special_tokens=True)
    model = ScriptedModel(tokenizer, "1 2 <|end|> 7 <eos>")
    model.generation_config = GenerationConfig(eos_token_id=[tokenizer.convert_tokens_to_ids("<|end|>")])
    generator = Generator(model, tokenizer, GenerationSettings(max_new_tokens=5))
    batch = generator.generate(["Human: sort 2 1 Assistant:"])
    assert batch.completion_mask.tolist() == [[1, 1, 1, 0, 0]]
    # The answer is read as it follows the prompt: its leading space stays, so prompt + answer is the whole text.
    assert batch.texts == [" 1 2"]


@pytest.mark.parametrize("settings", [{"max_new_tokens": 0}, {"temperature": 0.0}, {"batch_size": 0}])
def test_invalid_generation_settings_are_refused(settings):
    with pytest.raises(ValueError):
        GenerationSettings(**settings)


def test_history_is_kept_in_ds_chat_transcript_and_clear_resets_it():
    tokenizer = build_tokenizer()
    model = ScriptedModel(tokenizer, "1 3 4 <eos>")
    session = ChatSession(model, tokenizer, GenerationSettings(max_new_tokens=4))
    session.reply("sort 3 1 4")
    session.reply("sort 2 1")
    assert model.seen_prompts[0] == ["Human: sort 3 1 4 Assistant:"]
    assert model.seen_prompts[1] == ["Human: sort 3 1 4 Assistant: 1 3 4 Human: sort 2 1 Assistant:"]
    assert session.history == [("sort 3 1 4", "1 3 4"), ("sort 2 1", "1 3 4")]
    session.clear()
    session.reply("sort 2 1")
    assert model.seen_prompts[2] == ["Human: sort 2 1 Assistant:"]


def test_oldest_exchanges_are_dropped_when_the_conversation_outgrows_the_model():
    tokenizer = build_tokenizer()
    model = ScriptedModel(tokenizer, "1 2 3 <eos>", max_positions=32)
    session = ChatSession(model, tokenizer, GenerationSettings(max_new_tokens=8))  # prompts up to 24 tokens
    for _ in range(5):
        session.reply("sort 3 2 1")
    last_prompt = model.seen_prompts[-1][0]
    assert len(tokenizer.encode(last_prompt)) <= 24
    assert last_prompt.endswith("Human: sort 3 2 1 Assistant:")
    assert last_prompt.startswith("Human:")  # whole exchanges are dropped, not half of one
    assert len(session.history) < 5


def test_generator_keeps_the_end_of_a_prompt_longer_than_the_model_allows():
    tokenizer = build_tokenizer()
    model = ScriptedModel(tokenizer, "1 2 <eos>", max_positions=32)
    generator = Generator(model, tokenizer, GenerationSettings(max_new_tokens=8))
    assert generator.prompt_limit() == 24  # the positions minus the room kept for the answer
    prompt = "Human: sort " + " ".join(["3 2 1"] * 12) + " Assistant:"
    assert not generator.fits(prompt) and generator.fits("Human: sort 3 Assistant:")
    assert generator.complete([prompt]) == [" 1 2"]
    seen = tokenizer.encode(model.seen_prompts[0][0], add_special_tokens=False)
    assert len(seen) == 24 and model.seen_prompts[0][0].endswith("3 2 1 Assistant:")


def test_chat_template_is_used_and_its_user_marker_cuts_the_answer():
    tokenizer = build_tokenizer()
    tokenizer.add_tokens(["<|user|>", "<|assistant|>"], special_tokens=True)
    tokenizer.chat_template = TEMPLATE_WITH_MARKERS
    assert user_turn_marker(tokenizer) == "<|user|>"
    model = ScriptedModel(tokenizer, "1 3 <|user|> sort 4 <eos>")
    session = ChatSession(model, tokenizer, GenerationSettings(max_new_tokens=6))
    assert session.reply("sort 3 1") == "1 3"
    assert session.reply("sort 9 8") == "1 3"
    assert model.seen_prompts[0] == ["<|user|> sort 3 1 <|assistant|>"]
    assert model.seen_prompts[1] == ["<|user|> sort 3 1 <|assistant|> 1 3 <eos> <|user|> sort 9 8 <|assistant|>"]


def test_tokenizer_without_template_has_no_user_marker():
    assert user_turn_marker(build_tokenizer()) is None


def test_real_model_batched_answers_match_one_by_one(tiny_model_dir):
    session = ChatSession.from_pretrained(tiny_model_dir, GenerationSettings(max_new_tokens=6, batch_size=8))
    prompts = ["Human: sort 3 1 4 Assistant:", "Human: sort 9 Assistant:", "Human: sort 5 5 1 2 0 Assistant:"]
    together = session.generator.complete(prompts)
    alone = [session.generator.complete([prompt])[0] for prompt in prompts]
    assert together == alone  # left padding and positions do not change what the model says
    for answer in together:
        assert "<eos>" not in answer and "<pad>" not in answer and "Human:" not in answer
    first = session.reply("sort 3 1 4")
    assert isinstance(first, str) and session.history == [("sort 3 1 4", first)]


def test_run_conversation_handles_commands():
    tokenizer = build_tokenizer()
    session = ChatSession(ScriptedModel(tokenizer, "7 <eos>"), tokenizer)
    lines = iter(["sort 7\n", "\n", "clear\n", "sort 8\n", "QUIT\n", "sort 9\n"])
    written = []
    run_conversation(session, lambda: next(lines, ""), written.append)
    output = "".join(written)
    assert output.count("Assistant: 7") == 2
    assert "[conversation cleared]" in output
    assert session.history == [("sort 8", "7")]
    assert next(lines) == "sort 9\n"  # nothing is read after quit


def test_command_reads_stdin_until_quit(tiny_model_dir):
    conversation = "sort 3 1 4\nsort 2 2 1\nclear\nsort 3 1 4\nquit\nsort 9 9 9\n"
    result = subprocess.run(
        [sys.executable, "-m", "rlhf_trl.inference.chat", "--path", str(tiny_model_dir), "--max-new-tokens", "6"],
        input=conversation,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    answers = [line.split("Assistant: ", 1)[1] for line in result.stdout.splitlines() if "Assistant: " in line]
    assert len(answers) == 3  # the line after quit is never answered
    assert "[conversation cleared]" in result.stdout
    assert answers[2] == answers[0]  # after clear the same question is asked without history, greedy answer repeats
    assert all("<eos>" not in answer and "<pad>" not in answer for answer in answers)


def test_command_help_and_missing_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--max-new-tokens" in capsys.readouterr().out
    assert main(["--path", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_lora_adapter_folder_chats_like_the_merged_model(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    base = OPTForCausalLM.from_pretrained(tiny_model_dir)
    adapter = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "adapter")  # no tokenizer saved: it comes from the base model
    prompts = ["Human: sort 3 1 4 Assistant:", "Human: sort 7 7 0 Assistant:"]
    from_adapter = Generator.from_pretrained(tmp_path / "adapter", GenerationSettings(max_new_tokens=5))
    merged = Generator(adapter.merge_and_unload().eval(), build_tokenizer(), GenerationSettings(max_new_tokens=5))
    assert from_adapter.complete(prompts) == merged.complete(prompts)
