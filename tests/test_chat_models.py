"""Chat models through every step, with the tiny Llama-3-style model (its tokenizer adds BOS and its template writes
one too) and the Qwen2-style one: the reward model reads PPO's answers exactly as TRL's RewardTrainer showed it its
pairs, through its own tokenizer and chat template; no prompt gets a second BOS; reward and gold functions receive
TRL's forms; SFT on ``messages`` trains on the assistant turn only; pad tokens and critic vocabularies are checked."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)
from trl import RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

from rlhf_trl.generation import GenerationSettings, Generator, encode_prompts, encode_text
from rlhf_trl.inference.evaluate import main as eval_main
from rlhf_trl.inference.evaluate import score_pairs
from rlhf_trl.models import check_same_vocabulary, ensure_pad_token
from rlhf_trl.ppo.config import PPOConfig
from rlhf_trl.ppo.trainer import PPOTrainer
from rlhf_trl.reward.sources import RewardModelScorer
from rlhf_trl.scripts.ppo import cli as ppo_cli
from rlhf_trl.scripts.sft import as_prompt_completion
from rlhf_trl.scripts.sft import cli as sft_cli
from rlhf_trl.tiny.chat_model import build_chat_tokenizer, conversational_records
from rlhf_trl.tiny.task import gold_scores, make_records

HELD_OUT_PAIRS = 32


def _cpu(**values):
    return {"report_to": "none", "bf16": False, "use_cpu": True, "save_strategy": "no", **values}


@pytest.fixture(scope="module")
def trained_reward_dir(tmp_path_factory, tiny_chat_dir) -> Path:
    """A reward model trained by TRL's RewardTrainer on conversational pairs of the tiny chat model."""
    path = tmp_path_factory.mktemp("chat-rm") / "reward"
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_chat_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    args = RewardConfig(
        output_dir=str(path / "run"), max_steps=60, per_device_train_batch_size=32, learning_rate=1e-3, **_cpu()
    )
    train = Dataset.from_list(conversational_records("reward", 320)[:-HELD_OUT_PAIRS])
    trainer = RewardTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(path))
    tokenizer.save_pretrained(path)
    return path


def _held_out_pairs() -> list[dict]:
    return conversational_records("reward", 320)[-HELD_OUT_PAIRS:]


@torch.no_grad()
def _score_alone(model, id_lists) -> list[float]:
    return [model(input_ids=torch.tensor([ids])).logits[0, 0].item() for ids in id_lists]


def _ppo_trainer(tmp_path, actor_dir, prompts, critic_dir, reward_dir=None, reward_funcs=None, gold_funcs=None):
    """A PPOTrainer whose batch is all of ``prompts``."""
    args = PPOConfig(
        output_dir=str(tmp_path / "ppo"),
        max_steps=1,
        per_device_train_batch_size=len(prompts),
        num_mini_batches=1,
        max_prompt_length=48,
        max_new_tokens=8,
        logging_steps=1,
        save_steps=0,
        seed=0,
        report_to="none",
        bf16=False,
        use_cpu=True,
    )
    reward_model = reward_tokenizer = None
    if reward_dir is not None:
        reward_model = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1).eval()
        reward_tokenizer = AutoTokenizer.from_pretrained(reward_dir)
    return PPOTrainer(
        args=args,
        processing_class=AutoTokenizer.from_pretrained(actor_dir),
        model=AutoModelForCausalLM.from_pretrained(actor_dir),
        value_model=AutoModelForSequenceClassification.from_pretrained(critic_dir, num_labels=1),
        reward_model=reward_model,
        reward_processing_class=reward_tokenizer,
        reward_funcs=reward_funcs,
        gold_funcs=gold_funcs,
        train_dataset=Dataset.from_list([{"prompt": prompt} for prompt in prompts]),
    )


def _rollout_of(trainer, answers: list[str]):
    """What PPO collects when the actor writes ``answers`` (each followed by its end-of-turn token): the real
    generate() path with the sampler replaced by fixed tokens."""
    tokenizer = trainer.tokenizer
    rows = [tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.eos_token_id] for answer in answers]
    width = max(len(row) for row in rows)
    fixed = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in rows])
    trainer.generator.generate = lambda prompt_ids, prompt_mask: fixed
    # No decoding logits for fixed tokens: None makes score() run the actor's forward, as for any such backend.
    trainer.generator.generate_with_logprobs = lambda prompt_ids, prompt_mask, temperature: (fixed, None)
    prompts = trainer.train_prompts.prompts
    return trainer.generate(trainer.train_prompts.collate(prompts, trainer.train_prompts.ids, {}))


def test_reward_model_scores_ppo_answers_exactly_as_reward_trainer_saw_its_pairs(
    tmp_path, tiny_chat_dir, trained_reward_dir
):
    pairs = _held_out_pairs()
    reward_model = AutoModelForSequenceClassification.from_pretrained(trained_reward_dir, num_labels=1).eval()
    reward_tokenizer = AutoTokenizer.from_pretrained(trained_reward_dir)
    # TRL's own preprocessing of the held-out pairs: the token ids the reward model was trained to read.
    reference = RewardTrainer(
        model=reward_model,
        args=RewardConfig(output_dir=str(tmp_path / "rm"), **_cpu()),
        train_dataset=Dataset.from_list(pairs),
        processing_class=reward_tokenizer,
    ).train_dataset
    trl_chosen = _score_alone(reward_model, reference["chosen_ids"])
    trl_rejected = _score_alone(reward_model, reference["rejected_ids"])
    trl_accuracy = sum(c > r for c, r in zip(trl_chosen, trl_rejected)) / len(pairs)

    trainer = _ppo_trainer(
        tmp_path, tiny_chat_dir, [pair["prompt"] for pair in pairs], trained_reward_dir, trained_reward_dir
    )
    ppo_scores = {}
    for side in ("chosen", "rejected"):
        rollout = _rollout_of(trainer, [pair[side][0]["content"] for pair in pairs])
        trainer.score(rollout)
        ppo_scores[side] = rollout.raw_scores.tolist()
    ppo_accuracy = sum(c > r for c, r in zip(ppo_scores["chosen"], ppo_scores["rejected"])) / len(pairs)

    assert ppo_scores["chosen"] == pytest.approx(trl_chosen, abs=1e-4)
    assert ppo_scores["rejected"] == pytest.approx(trl_rejected, abs=1e-4)
    assert ppo_accuracy == trl_accuracy
    assert trl_accuracy > 0.6, "the reward model learned something (held-out accuracy 0.66 when written)"
    # The format matters: the same answers read without the template's markers score differently.
    plain = RewardModelScorer(reward_model, reward_tokenizer)
    rollout = _rollout_of(trainer, [pair["chosen"][0]["content"] for pair in pairs])
    texts = trainer.tokenizer.batch_decode(rollout.input_ids(), skip_special_tokens=True)
    unmarked = plain.score_ids([encode_text(reward_tokenizer, text + reward_tokenizer.eos_token) for text in texts])
    assert (unmarked - torch.tensor(trl_chosen)).abs().max() > 1e-2


@pytest.mark.parametrize("form", ["conversation", "text"])
def test_reward_model_with_its_own_tokenizer_and_functions_get_trl_forms(
    tmp_path, tiny_chat_dir, tiny_chat_reward_dir, tiny_qwen2_chat_dir, form
):
    """A Qwen2-style reward model (other vocabulary, other template) scores a Llama-style actor's answers."""
    reward_dir = tmp_path / "qwen-reward"
    qwen_model = AutoModelForSequenceClassification.from_pretrained(tiny_qwen2_chat_dir, num_labels=1)
    qwen_tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2_chat_dir)
    qwen_model.config.pad_token_id = qwen_tokenizer.pad_token_id
    qwen_model.save_pretrained(reward_dir)
    qwen_tokenizer.save_pretrained(reward_dir)
    records = make_records("ppo", 4)
    prompts = [
        [{"role": "user", "content": record["prompt"].removeprefix("Human: ").removesuffix(" Assistant:")}]
        if form == "conversation"
        else record["prompt"]
        for record in records
    ]
    seen = {}

    def recorder(prompts, completions, **columns):
        seen.update(prompts=prompts, completions=completions)
        return [0.0] * len(prompts)

    trainer = _ppo_trainer(
        tmp_path, tiny_chat_dir, prompts, tiny_chat_reward_dir, reward_dir, [recorder], [gold_scores]
    )
    answers = ["1 2 3", "4 5", "9", "0 1"]
    written = answers if form == "conversation" else [" " + answer for answer in answers]
    rollout = _rollout_of(trainer, written)
    trainer.score(rollout)

    if form == "conversation":
        assert seen["prompts"] == prompts
        assert seen["completions"] == [[{"role": "assistant", "content": answer}] for answer in answers]
        expected_ids = [
            qwen_tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=False)
            for prompt, answer in zip(prompts, answers)
        ]
        expected_ids = [qwen_tokenizer(text, add_special_tokens=False)["input_ids"] for text in expected_ids]
        shown = qwen_tokenizer.decode(expected_ids[0])
        assert shown.startswith("<|im_start|>user\n") and "<|im_start|>assistant\n1 2 3<|im_end|>" in shown
    else:
        assert seen["prompts"] == prompts
        assert seen["completions"] == written  # the answer as generated: no space added or lost
        expected_ids = [
            qwen_tokenizer(prompt + answer + qwen_tokenizer.eos_token)["input_ids"]
            for prompt, answer in zip(prompts, written)
        ]
    direct = _score_alone(AutoModelForSequenceClassification.from_pretrained(reward_dir).eval(), expected_ids)
    assert rollout.score_parts["reward_model"].tolist() == pytest.approx(direct, abs=1e-4)
    assert rollout.gold_scores.tolist() == gold_scores(prompts, seen["completions"])


def test_no_prompt_gets_a_second_bos(tiny_chat_dir, tiny_chat_reward_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_dir)
    bos = tokenizer.bos_token_id
    conversation = [{"role": "user", "content": "sort 3 1 2"}]
    for ids in encode_prompts(tokenizer, [conversation, "Human: sort 3 1 2 Assistant:"]):
        assert ids[0] == bos and ids.count(bos) == 1
    assert encode_text(tokenizer, tokenizer.bos_token + "sort 3 1").count(bos) == 1
    reward = AutoModelForSequenceClassification.from_pretrained(tiny_chat_reward_dir)
    scorer = RewardModelScorer(reward, AutoTokenizer.from_pretrained(tiny_chat_reward_dir))
    assert scorer.encode(conversation, "1 2 3").count(bos) == 1
    assert scorer.encode("Human: sort 3 1 2 Assistant:", " 1 2 3").count(bos) == 1
    generator = Generator(*_causal_lm(tiny_chat_dir), GenerationSettings(max_new_tokens=3))
    batch = generator.generate([conversation, [{"role": "user", "content": "sort 9 8"}]])
    for row, mask in zip(batch.prompt_ids, batch.prompt_mask):
        real = row[mask.bool()].tolist()
        assert real[0] == bos and real.count(bos) == 1


def _causal_lm(path):
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_sft_on_messages_trains_on_the_assistant_turn_only(tmp_path, tiny_chat_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_dir)
    records = [{"messages": r["prompt"] + r["completion"]} for r in conversational_records("sft", 8)]
    records[0]["messages"] = [
        {"role": "user", "content": "sort 2 1"},
        {"role": "assistant", "content": "1 2"},
        *records[0]["messages"],
    ]
    dataset = as_prompt_completion(Dataset.from_list(records), "train_dataset")
    assert dataset.column_names == ["prompt", "completion"]
    assert dataset[0]["completion"] == [records[0]["messages"][-1]]
    assert dataset[0]["prompt"] == records[0]["messages"][:-1]
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_chat_dir),
        args=SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=1, per_device_train_batch_size=4, **_cpu()),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    batch = trainer.data_collator([trainer.train_dataset[index] for index in range(4)])
    for record, ids, labels in zip(records, batch["input_ids"], batch["labels"]):
        trained = ids[labels != -100].tolist()
        answer = record["messages"][-1]["content"]
        # Only the last assistant turn (and the end-of-turn token closing it) is learned.
        assert tokenizer.decode(trained) == answer + tokenizer.eos_token
        real = ids[ids != tokenizer.pad_token_id].tolist()
        assert real.count(tokenizer.bos_token_id) == 1


def test_pad_token_prefers_the_tokenizers_own_then_the_setting_then_an_unused_token(caplog):
    llama = build_chat_tokenizer("llama")
    size = len(llama)
    ensure_pad_token(llama)
    assert llama.pad_token == "<|finetune_right_pad_id|>"  # its own, distinct from EOS
    llama.pad_token = llama.eos_token
    ensure_pad_token(llama)
    assert llama.pad_token == "<|finetune_right_pad_id|>" and len(llama) == size  # an unused token, nothing added
    ensure_pad_token(llama, "<|end_of_text|>")
    assert llama.pad_token == "<|end_of_text|>"
    with pytest.raises(ValueError, match="is the EOS token"):
        ensure_pad_token(llama, llama.eos_token)

    qwen = build_chat_tokenizer("qwen2")
    qwen.pad_token = None
    ensure_pad_token(qwen)
    assert qwen.pad_token == "<|endoftext|>" and qwen.eos_token == "<|im_end|>"

    bare = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "</s>": 1}, unk_token="a")), eos_token="</s>"
    )
    with caplog.at_level(logging.WARNING):
        ensure_pad_token(bare)
    assert bare.pad_token == "<pad>" and len(bare) == 3 and "a new token" in caplog.text


def test_critic_vocabulary_must_be_the_actors(tmp_path, tiny_chat_dir, tiny_qwen2_chat_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_dir)
    check_same_vocabulary(tokenizer, AutoTokenizer.from_pretrained(tiny_chat_dir), "critic")
    vocabulary = {"a": 0, "b": 1, "</s>": 2}
    permuted = {"a": 1, "b": 0, "</s>": 2}

    def word_level(vocab):
        return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="a")))

    with pytest.raises(ValueError, match="2 differ"):  # same size, different ids: still refused
        check_same_vocabulary(word_level(vocabulary), word_level(permuted), "critic")

    # A critic with fewer embeddings than the actor's vocabulary is refused by the trainer itself.
    small = tmp_path / "small-critic"
    critic = AutoModelForSequenceClassification.from_pretrained(tiny_chat_dir, num_labels=1)
    critic.resize_token_embeddings(10)
    critic.save_pretrained(small)
    with pytest.raises(ValueError, match="10 token embeddings"):
        _ppo_trainer(
            tmp_path, tiny_chat_dir, [[{"role": "user", "content": "sort 2 1"}]] * 2, small, None, [gold_scores]
        )


def test_ppo_command_refuses_a_critic_with_another_vocabulary_in_one_line(
    tmp_path, capsys, tiny_chat_dir, tiny_qwen2_chat_dir
):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in conversational_records("ppo", 4)))
    code = ppo_cli(
        [
            "--model_name_or_path",
            str(tiny_chat_dir),
            "--reward_model_path",
            str(tiny_qwen2_chat_dir),
            "--datasets",
            str(data),
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert "different vocabulary than the actor" in error and "Traceback" not in error


def test_eval_commands_read_conversational_files(tmp_path, tiny_chat_dir, tiny_chat_reward_dir):
    pairs = _held_out_pairs()[:6]
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    result = score_pairs(tiny_chat_reward_dir, pairs)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_chat_reward_dir).eval()
    rm_tokenizer = AutoTokenizer.from_pretrained(tiny_chat_reward_dir)
    as_trained = [rm_tokenizer.apply_chat_template(p["prompt"] + p["chosen"], tokenize=False) for p in pairs]
    direct = _score_alone(model, [rm_tokenizer(text, add_special_tokens=False)["input_ids"] for text in as_trained])
    assert result["chosen"] == pytest.approx(direct, abs=1e-4)
    assert eval_main(["reward", "--model", str(tiny_chat_reward_dir), "--data", str(pairs_file)]) == 0

    conversational = tmp_path / "prompts.jsonl"
    conversational.write_text("".join(json.dumps({"prompt": p["prompt"]}) + "\n" for p in pairs))
    output = tmp_path / "sft.jsonl"
    gold = "rlhf_trl.tiny.task:gold_scores"
    arguments = ["sft", "--base", str(tiny_chat_dir), "--model", str(tiny_chat_dir), "--prompts", str(conversational)]
    assert eval_main([*arguments, "--max-new-tokens", "6", "--gold", gold, "--output", str(output)]) == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [record["prompt"] for record in records] == [pair["prompt"] for pair in pairs]
    for record in records:
        completion = [{"role": "assistant", "content": record["model"]}]
        assert record["model_gold_score"] == gold_scores([record["prompt"]], [completion])[0]

    # Plain prompts on a chat model are asked as a conversation (a DS-Chat transcript split into its turns), as in
    # chat; the reward model reads the answer as generated, with nothing inserted.
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in make_records("eval", 4)))
    output = tmp_path / "ppo.json"
    actor = str(tiny_chat_dir)
    ppo_arguments = ["ppo", "--model", actor, "--reference", actor, "--reward", str(tiny_chat_reward_dir)]
    ppo_arguments += ["--prompts", str(plain), "--max-new-tokens", "6", "--gold", "tiny", "--output", str(output)]
    assert eval_main(ppo_arguments) == 0
    result = json.loads(output.read_text())
    assert result["summary"]["kl_mean"] == pytest.approx(0.0, abs=1e-5)
    scorer = RewardModelScorer(model, rm_tokenizer)
    for record in result["records"]:
        asked = [{"role": "user", "content": record["prompt"].removeprefix("Human: ").removesuffix(" Assistant:")}]
        answer = [{"role": "assistant", "content": record["actor"]}]
        assert record["actor_score"] == pytest.approx(scorer.score([asked], [answer]).item(), abs=1e-4)
        assert record["actor_gold_score"] == gold_scores([asked], [answer])[0]


def test_sft_command_on_messages_reports_the_gold_score(tmp_path, tiny_chat_dir):
    data = tmp_path / "messages.jsonl"
    records = [{"messages": r["prompt"] + r["completion"]} for r in conversational_records("sft", 60)]
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    arguments = ["--model_name_or_path", str(tiny_chat_dir), "--datasets", str(data), "--max_steps", "2"]
    arguments += ["--output_dir", str(tmp_path / "out"), "--eval_split_ratio", "0.2", "--plots", "false"]
    arguments += ["--gold_scorer", "rlhf_trl.tiny.task:gold_scores", "--report_to", "none", "--bf16", "false"]
    arguments += ["--use_cpu", "true", "--save_strategy", "no", "--per_device_train_batch_size", "8"]
    assert sft_cli(arguments) == 0
    metrics = json.loads((tmp_path / "out" / "run_info.json").read_text())["final_metrics"]
    assert 0.0 <= metrics["base_gold_score"] <= 1.0 and 0.0 <= metrics["eval_gold_score"] <= 1.0


def test_kwise_rankings_are_read_like_trl_pairs(tmp_path, tiny_chat_reward_dir):
    """Ranked conversational answers are tokenized exactly as RewardTrainer tokenizes the same pairs."""
    from rlhf_trl.reward.kwise import KWiseRewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_reward_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_chat_reward_dir, num_labels=1)
    pairs = _held_out_pairs()[:4]
    ranked = [{"prompt": pair["prompt"], "responses": [pair["chosen"], pair["rejected"]]} for pair in pairs]
    args = RewardConfig(output_dir=str(tmp_path / "kwise"), max_steps=1, **_cpu())
    kwise = KWiseRewardTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(ranked), processing_class=tokenizer
    ).train_dataset
    pairwise = RewardTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer
    ).train_dataset
    assert [ids[0] for ids in kwise["response_ids"]] == pairwise["chosen_ids"]
    assert [ids[1] for ids in kwise["response_ids"]] == pairwise["rejected_ids"]
    assert all(ids.count(tokenizer.bos_token_id) == 1 for ids in pairwise["chosen_ids"])
