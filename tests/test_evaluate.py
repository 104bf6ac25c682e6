"""Evaluation commands on tiny random models: input errors name file, record and field; the reward model's trained
head is loaded (not re-initialised) and scores match unpadded one-by-one scoring; the PPO metrics follow their
definitions (KL against a naive loop, zero against itself, ties, gold score)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import OPTForCausalLM, OPTForSequenceClassification

from rlhf_trl.generation import GenerationSettings, Generator
from rlhf_trl.inference.chat import ChatSession
from rlhf_trl.inference.eval_inputs import EvalInputError, read_records
from rlhf_trl.inference.evaluate import (
    completion_log_probs,
    evaluate_ppo,
    generate_answers,
    main,
    score_pairs,
    win_rate,
)
from rlhf_trl.reward.sources import RewardModelError, load_reward_model
from rlhf_trl.tiny.model import build_config, build_tokenizer
from rlhf_trl.tiny.task import gold_score, make_records


def _save_causal_lm(folder: Path, seed: int) -> Path:
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    OPTForCausalLM(build_config(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Two different tiny causal LMs and a reward model whose score head holds known, non-default weights."""
    root = tmp_path_factory.mktemp("eval-models")
    tokenizer = build_tokenizer()
    config = build_config(tokenizer)
    config.num_labels = 1
    torch.manual_seed(2)
    reward_model = OPTForSequenceClassification(config)
    with torch.no_grad():
        reward_model.score.weight.copy_(torch.linspace(-1.0, 1.0, reward_model.score.weight.numel()).view(1, -1))
    reward_model.save_pretrained(root / "reward")
    tokenizer.save_pretrained(root / "reward")
    return {
        "base": _save_causal_lm(root / "base", seed=0),
        "actor": _save_causal_lm(root / "actor", seed=1),
        "reward": root / "reward",
    }


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_read_records_accepts_jsonl_and_json(tmp_path):
    records = [{"prompt": "Human: sort 1 Assistant:"}, {"prompt": "Human: sort 2 Assistant:", "extra": 1}]
    assert read_records(_write_jsonl(tmp_path / "a.jsonl", records), ("prompt",)) == records
    (tmp_path / "b.json").write_text(json.dumps(records))
    assert read_records(tmp_path / "b.json", ("prompt",)) == records


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "a"}\n{"question": "b"}\n', "record 1: missing field 'prompt'"),
        ('{"prompt": "a"}\n{"prompt": ["b"]}\n', "record 1: field 'prompt': message 0 must be an object"),
        ('{"prompt": "a"}\n{"prompt": 3}\n', "field 'prompt' must be a string or a list of messages, found int"),
        ('{"prompt": [{"role": "user"}]}\n', "record 0: field 'prompt': message 0 must have a 'content' string"),
        ('{"prompt": "a"}\n{"prompt": \n', "line 2: not valid JSON"),
        ("", "no records"),
    ],
)
def test_read_records_errors_name_file_record_and_field(tmp_path, content, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text(content)
    with pytest.raises(EvalInputError) as error:
        read_records(path, ("prompt",))
    assert str(path) in str(error.value) and message in str(error.value)
    assert "\n" not in str(error.value)


def test_commands_report_bad_input_in_one_line(tmp_path, models, capsys):
    missing = tmp_path / "missing.jsonl"
    assert (
        main(["sft", "--base", str(models["base"]), "--model", str(models["actor"]), "--prompts", str(missing)]) == 2
    )
    error = capsys.readouterr().err.strip()
    assert error == f"error: {missing}: file not found"

    pairs = _write_jsonl(
        tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": " 1", "rejected": " 2"}, {"prompt": "p"}]
    )
    assert main(["reward", "--model", str(models["reward"]), "--data", str(pairs)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"error: {pairs}: record 1: missing field 'chosen'"


def test_help_of_every_command(capsys):
    for command in ([], ["sft"], ["reward"], ["ppo"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
    assert "--reference" in capsys.readouterr().out


def test_reward_head_is_loaded_not_reinitialised(models):
    model, _ = load_reward_model(models["reward"])
    expected = torch.linspace(-1.0, 1.0, model.score.weight.numel()).view(1, -1)
    assert torch.equal(model.score.weight, expected)
    saved = OPTForSequenceClassification.from_pretrained(models["reward"]).state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_causal_lm_is_refused_as_reward_model(models):
    with pytest.raises(RewardModelError, match="score.weight"):
        load_reward_model(models["base"])


def test_score_pairs_matches_unpadded_scoring_with_eos(models):
    records = make_records("reward", 12)
    result = score_pairs(models["reward"], records, batch_size=5)
    model, tokenizer = load_reward_model(models["reward"])

    def single_score(text: str) -> float:
        ids = tokenizer(text + tokenizer.eos_token, return_tensors="pt")
        return model(**ids).logits[0, 0].item()

    chosen = [single_score(record["prompt"] + record["chosen"]) for record in records]
    rejected = [single_score(record["prompt"] + record["rejected"]) for record in records]
    assert result["chosen"] == pytest.approx(chosen, abs=1e-5)
    assert result["rejected"] == pytest.approx(rejected, abs=1e-5)
    assert result["accuracy"] == sum(good > bad for good, bad in zip(chosen, rejected)) / len(records)
    assert result["chosen_stats"]["mean"] == pytest.approx(sum(chosen) / len(chosen), abs=1e-6)
    assert result["count"] == 12


def test_reward_command_writes_results_and_score_lists(tmp_path, models):
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", make_records("reward", 6))
    arguments = ["reward", "--model", str(models["reward"]), "--data", str(pairs)]
    assert main([*arguments, "--output", str(tmp_path / "r.json"), "--scores-file", str(tmp_path / "s.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    scores = json.loads((tmp_path / "s.json").read_text())
    assert set(scores) == {"chosen", "rejected"} and len(scores["chosen"]) == 6
    assert scores["chosen"] == result["chosen"] and 0.0 <= result["accuracy"] <= 1.0


def test_generate_answers_match_chat(models):
    prompts = [record["prompt"] for record in make_records("eval", 5)]
    answers = generate_answers(models["actor"], prompts, max_new_tokens=6)
    session = ChatSession.from_pretrained(models["actor"], GenerationSettings(max_new_tokens=6))
    assert answers == [session.generator.complete([prompt])[0] for prompt in prompts]


def test_sft_command_writes_both_answers_with_gold_scores(tmp_path, models):
    prompts = [record["prompt"] for record in make_records("eval", 4)]
    prompt_file = _write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": prompt} for prompt in prompts])
    output = tmp_path / "answers.jsonl"
    arguments = ["sft", "--base", str(models["base"]), "--model", str(models["actor"]), "--prompts", str(prompt_file)]
    assert main([*arguments, "--max-new-tokens", "6", "--gold", "tiny", "--output", str(output)]) == 0
    written = [json.loads(line) for line in output.read_text().splitlines()]
    assert [record["prompt"] for record in written] == prompts
    assert [record["model"] for record in written] == generate_answers(models["actor"], prompts, max_new_tokens=6)
    for record in written:
        assert record["model_gold_score"] == gold_score(record["prompt"], record["model"])
        assert record["base_gold_score"] == gold_score(record["prompt"], record["base"])


def test_completion_log_probs_match_a_naive_loop(models):
    generator = Generator.from_pretrained(models["actor"], GenerationSettings(max_new_tokens=5, do_sample=True))
    torch.manual_seed(0)
    batch = generator.generate(["Human: sort 3 1 4 Assistant:", "Human: sort 9 Assistant:"])
    temperature = 0.7
    batched = completion_log_probs(generator.model, batch, temperature)
    for row in range(2):
        prompt = batch.prompt_ids[row][batch.prompt_mask[row].bool()].tolist()
        for position in range(int(batch.completion_mask[row].sum())):
            context = prompt + batch.completion_ids[row, :position].tolist()
            with torch.no_grad():
                logits = generator.model(input_ids=torch.tensor([context])).logits[0, -1] / temperature
            expected = torch.log_softmax(logits, dim=-1)[batch.completion_ids[row, position]].item()
            assert batched[row, position].item() == pytest.approx(expected, abs=1e-4)


def test_ppo_against_itself_has_zero_kl_and_ties(models):
    prompts = [record["prompt"] for record in make_records("eval", 4)]
    result = evaluate_ppo(
        models["actor"], models["actor"], models["reward"], prompts, max_new_tokens=5, do_sample=False, gold="tiny"
    )
    summary = result["summary"]
    assert summary["kl_mean"] == 0.0
    assert summary["win_rate"] == 0.5
    assert summary["reward_mean"] == summary["reference_reward_mean"]
    assert 1 <= summary["response_length_mean"] <= 5
    golds = [gold_score(record["prompt"], record["actor"]) for record in result["records"]]
    assert summary["gold_score_mean"] == pytest.approx(sum(golds) / len(golds))


def test_ppo_command_against_another_model(tmp_path, models):
    prompt_file = _write_jsonl(tmp_path / "prompts.jsonl", make_records("eval", 4))
    output = tmp_path / "ppo.json"
    arguments = [
        "ppo",
        "--model",
        str(models["actor"]),
        "--reference",
        str(models["base"]),
        "--reward",
        str(models["reward"]),
        "--prompts",
        str(prompt_file),
        "--max-new-tokens",
        "5",
        "--gold",
        "tiny",
    ]
    assert main([*arguments, "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    summary = result["summary"]
    for key in ("reward_mean", "kl_mean", "response_length_mean", "win_rate", "gold_score_mean"):
        assert isinstance(summary[key], float), key
    assert summary["kl_mean"] > 0.0  # two different random models: sampled answers are likelier under the actor
    assert summary["kl_mean"] == pytest.approx(sum(r["kl"] for r in result["records"]) / 4)
    assert 0.0 <= summary["win_rate"] <= 1.0


def test_win_rate_counts_ties_as_half():
    assert win_rate([1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 4.0, -1.0]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)


def test_lora_reward_model_scores_like_the_model_that_was_saved(tmp_path, models):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(models["reward"])
    config = LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapter = get_peft_model(base, config)
    with torch.no_grad():
        adapter.base_model.model.score.modules_to_save["default"].weight.mul_(-3.0)  # a trained head of its own
    adapter.eval()
    adapter.save_pretrained(tmp_path / "reward-lora")
    records = make_records("reward", 4)
    result = score_pairs(tmp_path / "reward-lora", records)
    tokenizer = build_tokenizer()
    texts = [record["prompt"] + record["chosen"] + tokenizer.eos_token for record in records]
    with torch.no_grad():
        expected = [adapter(**tokenizer(text, return_tensors="pt")).logits[0, 0].item() for text in texts]
    assert result["chosen"] == pytest.approx(expected, abs=1e-5)
