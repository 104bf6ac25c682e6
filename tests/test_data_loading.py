"""DataArguments, tiny-sort and local files through load_step_datasets."""

from __future__ import annotations

import json

import pytest

from rlhf_trl.data import DataArguments, DataValidationError, load_step_datasets, tiny_sort
from rlhf_trl.tiny import task


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def pair_records(count):
    return [
        {
            "prompt": f"Human: question number {index} Assistant:",
            "chosen": f" good answer {index}",
            "rejected": f" bad answer {index}",
        }
        for index in range(count)
    ]


@pytest.fixture
def small_tiny_sizes(monkeypatch):
    monkeypatch.setitem(tiny_sort.TINY_SIZES, 1, 50)
    monkeypatch.setitem(tiny_sort.TINY_SIZES, 2, 40)
    monkeypatch.setitem(tiny_sort.TINY_SIZES, 3, 30)


def test_arguments_need_only_datasets_and_check_values():
    args = DataArguments(datasets=["tiny-sort"])
    assert args.data_split == "2,4,4" and args.step_shares == pytest.approx((0.2, 0.4, 0.4))
    assert args.data_seed == args.data_split_seed == 1234
    assert args.sources[0].name == "tiny-sort" and args.sources[0].weight == 1.0
    with pytest.raises(ValueError, match="data_split"):
        DataArguments(datasets=["x"], data_split="1,2")
    with pytest.raises(ValueError, match="eval_split_ratio"):
        DataArguments(datasets=["x"], eval_split_ratio=1.5)
    with pytest.raises(ValueError, match="record_format"):
        DataArguments(datasets=["x"], record_format="xml")
    with pytest.raises(ValueError, match="weight"):
        DataArguments(datasets=["x:-1"])


@pytest.mark.parametrize("config_name", ["SFTConfig", "RewardConfig"])
def test_arguments_parse_next_to_trl_configs(config_name, tmp_path):
    import trl

    parser = trl.TrlParser((getattr(trl, config_name), DataArguments))
    config, data_args = parser.parse_args_and_config(
        [
            "--output_dir",
            str(tmp_path),
            "--use_cpu",
            "true",
            "--bf16",
            "false",
            "--report_to",
            "none",
            "--datasets",
            "tiny-sort",
            "a.jsonl:2",
            "--data_split",
            "1,1,1",
            "--data_split_seed",
            "7",
            "--skip_invalid_records",
            "true",
            "--max_train_samples",
            "9",
        ]
    )
    assert data_args.datasets == ["tiny-sort", "a.jsonl:2"]
    assert data_args.sources[1].weight == 2.0
    assert data_args.data_split == "1,1,1" and data_args.data_split_seed == 7
    assert data_args.skip_invalid_records is True and data_args.max_train_samples == 9


def test_source_spec_forms():
    from rlhf_trl.data import parse_source_spec

    assert parse_source_spec("Dahoas/rm-static:0.5").weight == 0.5
    spec = parse_source_spec("Dahoas/rm-static@/data/copy:3")
    assert (spec.name, spec.local_path, spec.weight) == ("Dahoas/rm-static", "/data/copy", 3.0)
    assert parse_source_spec("C:odd").name == "C:odd"


def test_tiny_sort_steps_follow_task_and_sizes(small_tiny_sizes):
    first = load_step_datasets(DataArguments(datasets=["tiny-sort"]), 1)
    assert len(first.train) == 50 and len(first.eval) == tiny_sort.EVAL_PROMPTS
    expected = {(record["prompt"], record["completion"]) for record in task.make_records("sft", 50)}
    assert {(row["prompt"], row["completion"]) for row in first.train} == expected
    for row in first.eval:
        assert task.gold_score(row["prompt"], row["completion"]) == 1.0

    second = load_step_datasets(DataArguments(datasets=["tiny-sort"]), 2)
    assert len(second.train) == 40 and set(second.train.column_names) == {"prompt", "chosen", "rejected"}
    eval_prompts = {row["prompt"] for row in task.make_records("eval", tiny_sort.EVAL_PROMPTS)}
    assert {row["prompt"] for row in second.eval} == eval_prompts
    for row in second.eval:
        assert task.gold_score(row["prompt"], row["chosen"]) == 1.0
        assert task.gold_score(row["prompt"], row["rejected"]) < 1.0
    third = load_step_datasets(DataArguments(datasets=["tiny-sort"]), 3)
    assert third.train.column_names == ["prompt"] and len(third.train) == 30
    assert not {row["prompt"] for row in third.train} & eval_prompts


def test_tiny_sort_sizes_are_tunable_per_step():
    # The defaults are tuned by the recipes' authors; what must hold is one positive size per step.
    assert sorted(tiny_sort.TINY_SIZES) == [1, 2, 3]
    assert all(isinstance(size, int) and size > 0 for size in tiny_sort.TINY_SIZES.values())


def test_pairwise_jsonl_feeds_three_disjoint_steps(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", pair_records(100))
    args = DataArguments(datasets=[str(path)], eval_split_ratio=0.0, shared_by_steps="1,2,3")
    steps = {step: load_step_datasets(args, step) for step in (1, 2, 3)}
    assert [len(steps[step].train) for step in (1, 2, 3)] == [20, 40, 40]
    assert all(steps[step].eval is None for step in (1, 2, 3))
    assert steps[1].train.column_names == ["prompt", "completion"]
    for row in steps[1].train:
        assert row["completion"].startswith(" good answer")  # step 1 learns prompt + chosen
    assert set(steps[2].train.column_names) == {"prompt", "chosen", "rejected"}
    prompts = {step: {row["prompt"] for row in steps[step].train} for step in (1, 2, 3)}
    assert not prompts[1] & prompts[2] and not prompts[1] & prompts[3] and not prompts[2] & prompts[3]
    assert len(prompts[1] | prompts[2] | prompts[3]) == 100


def test_split_is_seeded(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", pair_records(60))

    def step_prompts(seed):
        args = DataArguments(datasets=[str(path)], data_split_seed=seed, shared_by_steps="1,2,3")
        return [row["prompt"] for row in load_step_datasets(args, 2).train]

    assert step_prompts(5) == step_prompts(5)
    assert set(step_prompts(5)) != set(step_prompts(6))


def test_automatic_eval_split_is_disjoint_from_train(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", pair_records(200))
    loaded = load_step_datasets(DataArguments(datasets=[str(path)], eval_split_ratio=0.1, shared_by_steps="1,2,3"), 2)
    assert len(loaded.train) + len(loaded.eval) == 80 and len(loaded.eval) == 8
    assert not {row["prompt"] for row in loaded.train} & {row["prompt"] for row in loaded.eval}


def test_json_list_file_like_ds_chat_local(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(pair_records(30)), encoding="utf-8")
    loaded = load_step_datasets(DataArguments(datasets=[str(path)], data_split="0,1,0", eval_split_ratio=0), 2)
    assert sorted(loaded.train["prompt"]) == sorted(record["prompt"] for record in pair_records(30))


def test_folder_with_train_and_eval_files(tmp_path):
    folder = tmp_path / "local"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.json").write_text(json.dumps(pair_records(20)), encoding="utf-8")
    write_jsonl(folder / "data" / "eval.jsonl", pair_records(25)[20:])
    loaded = load_step_datasets(DataArguments(datasets=[str(folder)], data_split="1,0,0"), 1)
    assert len(loaded.train) == 20 and len(loaded.eval) == 5
    assert set(loaded.eval["prompt"]) == {record["prompt"] for record in pair_records(25)[20:]}


def test_sft_only_and_prompt_only_sources(tmp_path):
    sft = write_jsonl(
        tmp_path / "sft.jsonl", [{"prompt": f"Human: q{i} Assistant:", "completion": f" a{i}"} for i in range(10)]
    )
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl", [{"prompt": f"Human: p{i} Assistant:", "answer": str(i)} for i in range(7)]
    )
    args = DataArguments(datasets=[str(sft), str(prompts)], eval_split_ratio=0, shared_by_steps="1,2,3")
    first = load_step_datasets(args, 1)
    assert len(first.train) == 10  # SFT-only data is not split by data_split
    assert any("not used in step 1" in note for report in first.summary.sources for note in report.notes)
    third = load_step_datasets(args, 3)
    assert len(third.train) == 7 and set(third.train.column_names) == {"prompt", "answer"}  # extra column kept
    with pytest.raises(DataValidationError, match="no training records for step 2"):
        load_step_datasets(args, 2)


def test_eval_datasets_replace_automatic_split(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", pair_records(50))
    held = write_jsonl(
        tmp_path / "held.jsonl", [{"prompt": "Human: held Assistant:", "chosen": " x", "rejected": " y"}]
    )
    loaded = load_step_datasets(
        DataArguments(datasets=[str(train)], eval_datasets=[str(held)], shared_by_steps="1,2,3"), 2
    )
    assert len(loaded.train) == 20 and loaded.eval["prompt"] == ["Human: held Assistant:"]


def test_mixing_weights_and_limits(tmp_path):
    first = write_jsonl(
        tmp_path / "a.jsonl", [{"prompt": f"Human: a{i} Assistant:", "completion": " x"} for i in range(10)]
    )
    second = write_jsonl(
        tmp_path / "b.jsonl", [{"prompt": f"Human: b{i} Assistant:", "completion": " y"} for i in range(10)]
    )
    args = DataArguments(datasets=[f"{first}:2", f"{second}:0.5"], eval_split_ratio=0)
    loaded = load_step_datasets(args, 1)
    prompts = loaded.train["prompt"]
    assert sum(prompt.startswith("Human: a") for prompt in prompts) == 20
    assert sum(prompt.startswith("Human: b") for prompt in prompts) == 5
    limited = load_step_datasets(DataArguments(datasets=[str(first)], eval_split_ratio=0, max_train_samples=4), 1)
    assert len(limited.train) == 4


def test_unknown_dataset_name():
    with pytest.raises(DataValidationError, match="not a registered dataset"):
        load_step_datasets(DataArguments(datasets=["nobody/nothing"]), 1)
