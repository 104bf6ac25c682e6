"""K-wise reward training: the loss against a naive loop, the collator, training on the tiny model, and K-wise vs
independent pairs on a ranked version of the tiny task."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
import torch.nn.functional as functional
from datasets import Dataset
from transformers import OPTForSequenceClassification, TrainerCallback
from trl import RewardConfig, RewardTrainer

from rlhf_trl.reward.kwise import DataCollatorForRanking, KWiseRewardTrainer, expand_rankings_to_pairs, ranking_loss
from rlhf_trl.tiny import task
from rlhf_trl.tiny.model import build_config, build_tokenizer

FLAWS = ("copy", "ramble", "drop", "swap")


def ranked_records(split: str, count: int, seed: int) -> list[dict]:
    """Prompts of the tiny task, each with the correct answer and flawed ones, scored by the gold scorer."""
    rng = random.Random(seed)
    records = []
    for record in task.make_records(split, count):
        prompt = record["prompt"]
        numbers = task.target_answer(prompt)
        answers = {" " + " ".join(numbers)}
        answers.update(" " + " ".join(task._flawed_answer(numbers, flaw, rng)) for flaw in FLAWS)
        answers = sorted(answers)
        rng.shuffle(answers)
        scores = [task.gold_score(prompt, answer) for answer in answers]
        if len(set(scores)) >= 2:
            records.append({"prompt": prompt, "responses": answers, "scores": scores})
    return records


def naive_ranking_loss(rewards, scores, group_ids):
    group_losses = []
    for group in sorted(set(group_ids.tolist())):
        members = [index for index in range(len(rewards)) if group_ids[index] == group]
        pair_losses = [
            -functional.logsigmoid(rewards[first] - rewards[second])
            for first, second in itertools.permutations(members, 2)
            if scores[first] > scores[second]
        ]
        if pair_losses:
            group_losses.append(sum(pair_losses) / len(pair_losses))
    return sum(group_losses) / len(group_losses)


def test_ranking_loss_matches_naive_loop():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        count = int(torch.randint(2, 12, (1,), generator=generator))
        rewards = torch.randn(count, generator=generator, dtype=torch.float64)
        scores = torch.randint(0, 3, (count,), generator=generator).to(torch.float64)
        group_ids = torch.sort(torch.randint(0, 3, (count,), generator=generator)).values
        group_ids = torch.unique(group_ids, return_inverse=True)[1]  # groups numbered 0..G-1
        has_pair = any(
            scores[first] > scores[second] and group_ids[first] == group_ids[second]
            for first, second in itertools.permutations(range(count), 2)
        )
        if not has_pair:
            continue
        loss, statistics = ranking_loss(rewards, scores, group_ids)
        assert torch.allclose(loss, naive_ranking_loss(rewards, scores, group_ids))
        pairs = [
            (first, second)
            for first, second in itertools.permutations(range(count), 2)
            if group_ids[first] == group_ids[second] and scores[first] > scores[second]
        ]
        assert statistics["pairs"] == len(pairs)
        assert statistics["correct_pairs"] == sum(rewards[first] > rewards[second] for first, second in pairs)


def test_two_answers_equal_the_pairwise_loss():
    rewards = torch.tensor([0.3, -0.2, 1.0, 2.0])
    loss, _ = ranking_loss(rewards, torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1]))
    expected = -functional.logsigmoid(torch.tensor([0.3 - (-0.2), 2.0 - 1.0])).mean()
    assert torch.allclose(loss, expected)


def test_top1_statistics():
    rewards = torch.tensor([0.9, 0.1, 0.5, 0.2, 0.8])
    scores = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0])
    _, statistics = ranking_loss(rewards, scores, torch.tensor([0, 0, 0, 1, 1]))
    assert statistics["top_hits"] == 1 and statistics["groups"] == 2  # the second prompt ranks its worst answer first
    assert statistics["best_reward_sum"] == pytest.approx(0.9 + 0.2)


def test_collator_flattens_rankings():
    collator = DataCollatorForRanking(pad_token_id=0)
    batch = collator(
        [
            {"response_ids": [[5, 6, 7], [5, 8]], "scores": [1.0, 0.0]},
            {"response_ids": [[9], [9, 9], [9, 9, 9, 9]], "scores": [0.0, 2.0, 1.0]},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [5, 8, 0, 0], [9, 0, 0, 0], [9, 9, 0, 0], [9, 9, 9, 9]]
    assert batch["attention_mask"].sum(dim=1).tolist() == [3, 2, 1, 2, 4]
    assert batch["group_ids"].tolist() == [0, 0, 1, 1, 1]
    assert batch["scores"].tolist() == [1.0, 0.0, 0.0, 2.0, 1.0]
    assert DataCollatorForRanking(0, pad_to_multiple_of=8)([{"response_ids": [[1], [2]], "scores": [1, 0]}])[
        "input_ids"
    ].shape == (2, 8)


def test_expand_rankings_to_pairs():
    rankings = Dataset.from_list([{"prompt": "p", "responses": [" a", " b", " c"], "scores": [0.0, 2.0, 2.0]}])
    pairs = expand_rankings_to_pairs(rankings)
    assert sorted((row["chosen"], row["rejected"]) for row in pairs) == [(" b", " a"), (" c", " a")]


def tiny_reward_model(tokenizer, seed=0):
    torch.manual_seed(seed)
    config = build_config(tokenizer)
    config.num_labels = 1
    return OPTForSequenceClassification(config)


def reward_config(output_dir, **overrides):
    settings = dict(
        output_dir=str(output_dir),
        bf16=False,
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        num_train_epochs=1,
        logging_steps=5,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    return RewardConfig(**settings)


def test_trainer_learns_rankings(tmp_path):
    tokenizer = build_tokenizer()
    model = tiny_reward_model(tokenizer)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    train = Dataset.from_list(ranked_records("reward", 160, seed=1))
    evaluation = Dataset.from_list(ranked_records("eval", 48, seed=2))
    trainer = KWiseRewardTrainer(
        model=model,
        args=reward_config(tmp_path, num_train_epochs=2),
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
    )
    assert isinstance(trainer.data_collator, DataCollatorForRanking)
    start = trainer.evaluate()
    trainer.train()
    end = trainer.evaluate()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0]
    assert end["eval_loss"] < start["eval_loss"]
    assert end["eval_accuracy"] > start["eval_accuracy"]
    for key in ("eval_accuracy", "eval_top1_accuracy", "eval_margin", "eval_mean_reward", "eval_best_answer_reward"):
        assert key in end
    assert end["eval_best_answer_reward"] > end["eval_worst_answer_reward"]
    changed = [name for name, parameter in model.named_parameters() if not torch.equal(before[name], parameter)]
    assert "score.weight" in changed and len(changed) > len(before) // 2


def test_trainer_accepts_pairs_and_drops_long_answers(tmp_path):
    tokenizer = build_tokenizer()
    pairs = Dataset.from_list(
        [{"prompt": "Human: sort 2 1 Assistant:", "chosen": " 1 2", "rejected": " 2 1 1 1 1 1 1 1 1"}] * 4
        + [{"prompt": "Human: sort 3 1 Assistant:", "chosen": " 1 3", "rejected": " 3"}] * 4
    )
    trainer = KWiseRewardTrainer(
        model=tiny_reward_model(tokenizer),
        args=reward_config(tmp_path, max_length=10, max_steps=1),
        train_dataset=pairs,
        processing_class=tokenizer,
    )
    prepared = trainer.train_dataset
    assert len(prepared) == 4  # pairs whose rejected answer was too long have nothing left to compare
    assert all(ids[-1] == tokenizer.eos_token_id for row in prepared for ids in row["response_ids"])
    trainer.train()


class PairAccuracyProbe(TrainerCallback):
    """Pair accuracy of the model on held-out rankings every ``every`` optimizer steps and at the end."""

    def __init__(self, tokenizer, rankings, every):
        self.tokenizer, self.rankings, self.every, self.history = tokenizer, rankings, every, {}

    def on_step_end(self, args, state, control, model=None, **_):
        if state.global_step % self.every == 0:
            self.history[state.global_step] = pair_accuracy(model, self.tokenizer, self.rankings)

    def on_train_end(self, args, state, control, model=None, **_):
        if state.global_step not in self.history:
            self.history[state.global_step] = pair_accuracy(model, self.tokenizer, self.rankings)


def pair_accuracy(model, tokenizer, rankings):
    texts = [
        ranking["prompt"] + answer + tokenizer.eos_token for ranking in rankings for answer in ranking["responses"]
    ]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        rewards = torch.cat(
            [
                model(**tokenizer(texts[start : start + 512], return_tensors="pt", padding=True)).logits.squeeze(-1)
                for start in range(0, len(texts), 512)
            ]
        )
    model.train(was_training)
    correct = total = position = 0
    for ranking in rankings:
        scores, count = ranking["scores"], len(ranking["scores"])
        answer_rewards = rewards[position : position + count]
        position += count
        for first, second in itertools.permutations(range(count), 2):
            if scores[first] > scores[second]:
                total += 1
                correct += int(answer_rewards[first] > answer_rewards[second])
    return correct / total


def train_and_probe(kind, train_rankings, eval_rankings, output_dir, every, seed=0, max_steps=-1):
    tokenizer = build_tokenizer()
    data = Dataset.from_list(train_rankings)
    trainer_class = KWiseRewardTrainer
    if kind == "pairs":
        data, trainer_class = expand_rankings_to_pairs(data), RewardTrainer
    probe = PairAccuracyProbe(tokenizer, eval_rankings, every)
    trainer = trainer_class(
        model=tiny_reward_model(tokenizer, seed),
        args=reward_config(output_dir, logging_steps=1000, seed=seed, max_steps=max_steps, learning_rate=3e-4),
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[probe],
    )
    trainer.train()
    return probe.history


def compare_kwise_with_pairs(output_dir, seed=0, prompts=400):
    """Train both ways on the same rankings; return {"kwise"|"pairs": {step: eval pair accuracy}} and the sizes.

    Same model initialisation, optimiser, constant learning rate (3e-4) and batch size (8 examples). An example is one
    ranking for the K-wise trainer and one pair for the pairwise one. The K-wise run is one epoch; the pairwise
    run stops once it has scored as many sequences as the K-wise epoch did (2 per pair, K per ranking).
    """
    train_rankings = ranked_records("reward", prompts, seed=1)
    eval_rankings = ranked_records("eval", 200, seed=2)
    answers = sum(len(ranking["responses"]) for ranking in train_rankings)
    kwise_steps = -(-len(train_rankings) // 8)
    pairs_steps = -(-answers // 16)  # equal compute: answers of the K-wise epoch, two sequences per pair
    histories = {
        "kwise": train_and_probe("kwise", train_rankings, eval_rankings, output_dir / "kwise", 10, seed),
        "pairs": train_and_probe("pairs", train_rankings, eval_rankings, output_dir / "pairs", 10, seed, pairs_steps),
    }
    sizes = {
        "rankings": len(train_rankings),
        "answers": answers,
        "kwise_steps": kwise_steps,
        "pairs_steps": pairs_steps,
    }
    return histories, sizes


@pytest.mark.slow
def test_kwise_beats_independent_pairs_per_example_seen(tmp_path):
    histories, sizes = compare_kwise_with_pairs(tmp_path)
    mean_answers = sizes["answers"] / sizes["rankings"]
    print(f"\n{sizes}")
    print("trainer  step  examples  sequences  eval_pair_accuracy")
    for name, sequences_per_example in (("kwise", mean_answers), ("pairs", 2.0)):
        for step, accuracy in histories[name].items():
            print(f"{name:7} {step:5} {step * 8:9} {round(step * 8 * sequences_per_example):10}  {accuracy:.3f}")
    kwise, pairs = histories["kwise"], histories["pairs"]
    kwise_final = kwise[max(kwise)]
    # Per example seen: the pairwise trainer after as many examples (steps) as the K-wise epoch. Measured over
    # seeds 0-2: 0.70-0.71 against 0.61-0.64.
    assert kwise_final > pairs[max(kwise)] + 0.03
    # Per sequence scored (compute), the pairwise trainer after as many sequences as the K-wise epoch: 0.62-0.70
    # over the same seeds, so K-wise is at least as good; the margin is within seed noise, hence the tolerance.
    assert kwise_final > pairs[max(pairs)] - 0.03
