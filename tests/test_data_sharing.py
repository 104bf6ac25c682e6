"""data_split cuts a dataset only between steps that read it; the summary says what each step took and why."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from rlhf_trl.data import DataArguments, DataValidationError, load_step_datasets


def write_pairs(path, count, tag="q"):
    records = [
        {"prompt": f"Human: {tag}{index} Assistant:", "chosen": " y", "rejected": " n"} for index in range(count)
    ]
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def write_recipe(path, datasets):
    path.write_text(yaml.safe_dump({"datasets": datasets}), encoding="utf-8")
    return str(path)


def test_a_dataset_given_to_one_step_is_used_whole(tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 2000)
    loaded = load_step_datasets(DataArguments(datasets=[str(pairs)]), 2)
    assert len(loaded.train) + len(loaded.eval) == 2000
    report = loaded.summary.sources[0]
    assert report.taken == "whole dataset: only step 2 reads it"
    text = str(loaded.summary)
    assert "whole dataset: only step 2 reads it" in text and " 1900 " in text and " 100 " in text


def test_ds_chat_shared_list_keeps_ds_chat_shares(tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 100)
    args = DataArguments(datasets=[str(pairs)], eval_split_ratio=0, shared_by_steps="1,2,3")
    sizes = [len(load_step_datasets(args, step).train) for step in (1, 2, 3)]
    assert sizes == [20, 40, 40]
    taken = load_step_datasets(args, 2).summary.sources[0].taken
    assert taken == "share 4 of 2,4,4 (data_split 2,4,4; steps 1, 2, 3 read it)"


def test_pipeline_recipes_share_only_what_several_steps_name(tmp_path):
    shared = write_pairs(tmp_path / "shared.jsonl", 90, tag="s")
    own = write_pairs(tmp_path / "own.jsonl", 30, tag="o")
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"prompt": "Human: hi Assistant:", "completion": " hello"}) + "\n", encoding="utf-8")
    recipes = [
        write_recipe(tmp_path / "sft.yaml", [str(sft)]),
        write_recipe(tmp_path / "reward.yaml", [str(shared)]),
        write_recipe(tmp_path / "ppo.yaml", [f"{shared}:2", str(own)]),  # a weight does not make it another dataset
    ]
    settings = {"pipeline_configs": recipes, "eval_split_ratio": 0}
    second = load_step_datasets(DataArguments(datasets=[str(shared)], **settings), 2)
    third = load_step_datasets(DataArguments(datasets=[str(shared), str(own)], **settings), 3)
    second_prompts = set(second.train["prompt"])
    third_shared = {prompt for prompt in third.train["prompt"] if prompt.startswith("Human: s")}
    # Steps 2 and 3 split the shared file 4:4 and nothing of it is lost; the file only step 3 names is whole.
    assert len(second_prompts) == 45 and len(third_shared) == 45 and not second_prompts & third_shared
    assert sum(prompt.startswith("Human: o") for prompt in third.train["prompt"]) == 30
    reports = {report.source: report for report in third.summary.sources}
    assert reports[str(shared)].taken == "share 4 of 4,4 (data_split 2,4,4; steps 2, 3 read it)"
    assert reports[str(own)].taken == "whole dataset: only step 3 reads it"
    first = load_step_datasets(DataArguments(datasets=[str(sft)], **settings), 1)
    assert len(first.train) == 1 and first.summary.sources[0].taken == "whole dataset: only step 1 reads it"


def test_summary_shows_dashes_not_zeros_for_unused_and_eval_only_sources(tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 40)
    held = write_pairs(tmp_path / "held.jsonl", 5, tag="h")
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"prompt": "Human: hi Assistant:", "completion": " hello"}) + "\n", encoding="utf-8")
    args = DataArguments(datasets=[str(pairs), str(sft)], eval_datasets=[str(held)])
    text = str(load_step_datasets(args, 2).summary)
    lines = text.splitlines()
    header = re.split(r"\s{2,}", lines[1])
    rows = {tuple(cells[:2]): dict(zip(header, cells)) for cells in (re.split(r"\s{2,}", line) for line in lines[3:6])}
    assert rows[(str(pairs), "train")]["train"] == "40"
    assert rows[(str(pairs), "train")]["taken"] == "whole dataset: only step 2 reads it"
    unused = rows[(str(sft), "train")]
    assert [unused[column] for column in ("read", "valid", "train", "eval")] == ["-", "-", "-", "-"]
    assert unused["taken"] == "not used in step 2: it cannot use prompt/completion data (steps 1, 3 can)"
    assert rows[(str(held), "eval")]["train"] == "-" and rows[(str(held), "eval")]["eval"] == "5"


def test_data_split_giving_sharing_steps_nothing_is_an_error(tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 10)
    args = DataArguments(datasets=[str(pairs)], data_split="1,0,0", shared_by_steps="2,3")
    with pytest.raises(DataValidationError, match="gives steps 2, 3, which share a dataset, none of it"):
        load_step_datasets(args, 2)


def test_e2e_passes_every_step_the_pipeline_recipes(tmp_path):
    from rlhf_trl.scripts.e2e import build_parser, recipe_dir, step_arguments

    args = build_parser().parse_args([])
    recipe = recipe_dir("tiny")
    arguments = step_arguments(2, args, recipe, tmp_path)
    position = arguments.index("--pipeline_configs")
    assert arguments[position + 1 : position + 4] == [
        str(recipe / name) for name in ("sft.yaml", "reward.yaml", "ppo.yaml")
    ]


def test_cache_key_follows_what_the_other_recipes_name(tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 60)
    recipes = [
        write_recipe(tmp_path / "sft.yaml", []),
        write_recipe(tmp_path / "reward.yaml", [str(pairs)]),
        write_recipe(tmp_path / "ppo.yaml", []),
    ]
    args = DataArguments(
        datasets=[str(pairs)], pipeline_configs=recipes, eval_split_ratio=0, data_cache_dir=str(tmp_path / "cache")
    )
    assert len(load_step_datasets(args, 2).train) == 60
    write_recipe(tmp_path / "ppo.yaml", [str(pairs)])  # now step 3 reads it too: step 2 keeps its share only
    assert len(load_step_datasets(args, 2).train) == 30
