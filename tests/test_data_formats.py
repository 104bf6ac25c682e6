"""File formats (parquet, csv, saved datasets) and K-wise ranking records through the steps."""

from __future__ import annotations

import json

import datasets
import pyarrow
import pyarrow.parquet
import pytest

from rlhf_trl.data import DataArguments, load_step_datasets

PAIRS = [
    {"prompt": f"Human: q{index} Assistant:", "chosen": f" good {index}", "rejected": f" bad {index}"}
    for index in range(12)
]


def load(path, step, **settings):
    settings.setdefault("data_split", "1,1,1")
    settings.setdefault("eval_split_ratio", 0)
    return load_step_datasets(DataArguments(datasets=[str(path)], **settings), step)


def all_steps_prompts(path):
    return sorted(prompt for step in (1, 2, 3) for prompt in load(path, step, shared_by_steps="1,2,3").train["prompt"])


def test_parquet_csv_json_jsonl_agree(tmp_path):
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps(record) + "\n" for record in PAIRS), encoding="utf-8")
    parquet = tmp_path / "pairs.parquet"
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(PAIRS), parquet)
    csv_path = tmp_path / "pairs.csv"
    datasets.Dataset.from_list(PAIRS).to_csv(str(csv_path), index=False)
    json_path = tmp_path / "pairs.json"
    json_path.write_text(json.dumps(PAIRS), encoding="utf-8")
    expected = sorted(record["prompt"] for record in PAIRS)
    for path in (jsonl, parquet, csv_path, json_path):
        assert all_steps_prompts(path) == expected, path.suffix
    # Same content, same split, whatever the format.
    assert load(parquet, 2).train["prompt"] == load(jsonl, 2).train["prompt"]


def test_saved_dataset_folder(tmp_path):
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(PAIRS[:10]), "test": datasets.Dataset.from_list(PAIRS[10:])}
    ).save_to_disk(str(tmp_path / "saved"))
    loaded = load(tmp_path / "saved", 2, data_split="0,1,0")
    assert len(loaded.train) == 10 and sorted(loaded.eval["prompt"]) == [
        "Human: q10 Assistant:",
        "Human: q11 Assistant:",
    ]
    datasets.Dataset.from_list(PAIRS).save_to_disk(str(tmp_path / "single"))
    assert len(load(tmp_path / "single", 2, data_split="0,1,0").train) == 12


RANKINGS = [
    {
        "prompt": f"Human: sort {index} 1 Assistant:",
        "responses": [" worst", " best", " middle"],
        "scores": [0.0, 1.0, 0.5],
    }
    for index in range(9)
]


def test_rankings_through_the_steps(tmp_path):
    path = tmp_path / "ranks.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in RANKINGS), encoding="utf-8")
    first = load(path, 1)
    assert set(first.train["completion"]) == {" best"}  # step 1 learns the best answer
    second = load(path, 2)
    row = second.train[0]
    assert row["responses"] == [" best", " middle", " worst"] and row["scores"] == [1.0, 0.5, 0.0]
    assert load(path, 3).train.column_names == ["prompt"]


def test_rankings_without_scores_are_best_first(tmp_path):
    path = tmp_path / "ranks.jsonl"
    records = [{"prompt": f"Human: q{index} Assistant:", "responses": [" a", " b", " c"]} for index in range(3)]
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    row = load(path, 2, data_split="0,1,0").train[0]
    assert row["responses"] == [" a", " b", " c"] and row["scores"] == [2.0, 1.0, 0.0]


def test_rankings_and_pairs_mix_as_rankings(tmp_path):
    ranks, pairs = tmp_path / "ranks.jsonl", tmp_path / "pairs.jsonl"
    ranks.write_text("".join(json.dumps(record) + "\n" for record in RANKINGS), encoding="utf-8")
    pairs.write_text("".join(json.dumps(record) + "\n" for record in PAIRS), encoding="utf-8")
    loaded = load_step_datasets(
        DataArguments(datasets=[str(ranks), str(pairs)], data_split="0,1,0", eval_split_ratio=0), 2
    )
    assert set(loaded.train.column_names) == {"prompt", "responses", "scores"} and len(loaded.train) == 21
    as_pair = next(row for row in loaded.train if row["prompt"] == "Human: q0 Assistant:")
    assert as_pair["responses"] == [" good 0", " bad 0"] and as_pair["scores"] == [1.0, 0.0]


def test_step_three_extra_columns_of_different_sources(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(json.dumps({"prompt": "Human: a Assistant:", "answer": "1"}) + "\n", encoding="utf-8")
    second.write_text(json.dumps({"prompt": "Human: b Assistant:", "topic": "x"}) + "\n", encoding="utf-8")
    loaded = load_step_datasets(DataArguments(datasets=[str(first), str(second)], eval_split_ratio=0), 3)
    rows = sorted(loaded.train, key=lambda row: row["prompt"])
    assert rows == [
        {"answer": "1", "prompt": "Human: a Assistant:", "topic": None},
        {"answer": None, "prompt": "Human: b Assistant:", "topic": "x"},
    ]


def test_blank_rejected_answer_is_kept(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "Human: q Assistant:", "chosen": " yes", "rejected": " "}) + "\n", "utf-8")
    assert load(path, 2, data_split="0,1,0").train[0]["rejected"] == " "
    with pytest.raises(Exception, match="empty string"):
        path.write_text(
            json.dumps({"prompt": "Human: q Assistant:", "chosen": " ", "rejected": " no"}) + "\n", "utf-8"
        )
        load(path, 2)


def test_step_records_feed_trl_trainers(tmp_path, monkeypatch):
    """Steps 1 and 2 of tiny-sort go straight into TRL's SFTTrainer and RewardTrainer."""
    import torch
    from transformers import OPTForCausalLM, OPTForSequenceClassification
    from trl import RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

    from rlhf_trl.data import tiny_sort
    from rlhf_trl.tiny.model import build_config, build_tokenizer

    for step in (1, 2):
        monkeypatch.setitem(tiny_sort.TINY_SIZES, step, 16)
    common = dict(bf16=False, use_cpu=True, report_to="none", max_steps=2, per_device_train_batch_size=4)
    common.update(save_strategy="no", disable_tqdm=True)
    args = DataArguments(datasets=["tiny-sort"], max_eval_samples=8)
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    first = load_step_datasets(args, 1)
    sft = SFTTrainer(
        model=OPTForCausalLM(build_config(tokenizer)),
        args=SFTConfig(output_dir=str(tmp_path / "sft"), **common),
        train_dataset=first.train,
        eval_dataset=first.eval,
        processing_class=tokenizer,
    )
    sft.train()
    assert "eval_loss" in sft.evaluate()
    config = build_config(tokenizer)
    config.num_labels = 1
    second = load_step_datasets(args, 2)
    reward = RewardTrainer(
        model=OPTForSequenceClassification(config),
        args=RewardConfig(output_dir=str(tmp_path / "reward"), **common),
        train_dataset=second.train,
        eval_dataset=second.eval,
        processing_class=tokenizer,
    )
    reward.train()
    assert "eval_accuracy" in reward.evaluate()
