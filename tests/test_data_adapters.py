"""DS-Chat's named datasets, read from small fixtures written in each dataset's real schema (invented text)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from rlhf_trl.data import (
    DataArguments,
    DatasetAdapter,
    DataValidationError,
    get_adapter,
    load_step_datasets,
    register_dataset,
    registered_names,
)
from rlhf_trl.data.adapters import DS_CHAT_ADAPTERS

HUB = Path(__file__).parent / "fixtures" / "data" / "hub"
DS_CHAT_NAMES = [
    "Dahoas/rm-static",
    "Dahoas/full-hh-rlhf",
    "Dahoas/synthetic-instruct-gptj-pairwise",
    "yitingxie/rlhf-reward-datasets",
    "openai/webgpt_comparisons",
    "stanfordnlp/SHP",
    "wangrui6/Zhihu-KOL",
    "Cohere/miracl-zh-queries-22-12",
    "Hello-SimpleAI/HC3-Chinese",
    "mkqa-Chinese",
    "mkqa-Japanese",
    "Cohere/miracl-ja-queries-22-12",
    "lmqg/qg_jaquad",
    "lmqg/qag_jaquad",
]
FIXTURE_FOLDERS = {name: HUB / name for name in DS_CHAT_NAMES}
FIXTURE_FOLDERS["mkqa-Chinese"] = FIXTURE_FOLDERS["mkqa-Japanese"] = HUB / "apple" / "mkqa"

# The first training row of each fixture, as our record.
EXPECTED_FIRST = {
    "Dahoas/rm-static": {
        "prompt": "\n\nHuman: How often should I water a cactus?\n\nAssistant:",
        "chosen": " About once every two or three weeks, less in winter.",
        "rejected": " Every hour.",
    },
    "Dahoas/synthetic-instruct-gptj-pairwise": {
        "prompt": "Human: Describe how to fold a paper plane. Assistant:",
        "chosen": " Fold the sheet in half, fold the corners to the crease, then fold the wings down.",
        "rejected": " Paper is made from trees.",
    },
    "yitingxie/rlhf-reward-datasets": {
        "prompt": "\n\nHuman: What is the capital of the made-up land of Norria?\n\nAssistant:",
        "chosen": " Norria is fictional, so it has no real capital.",
        "rejected": " Paris.",
    },
    "openai/webgpt_comparisons": {
        "prompt": "Human: Why do leaves change colour in autumn? Assistant:",
        "chosen": " Chlorophyll breaks down and other pigments show.",
        "rejected": " Leaves are painted.",
    },
    "stanfordnlp/SHP": {
        "prompt": "Human: Why do onions make people cry? Assistant:",
        "chosen": " They release a gas that irritates the eyes.",
        "rejected": " Onions are sad.",
    },
    "wangrui6/Zhihu-KOL": {
        "prompt": "Human: 如何养好一盆绿萝？ Assistant:",
        "completion": " 放在明亮的散射光处，土干了再浇水。",
    },
    "Cohere/miracl-zh-queries-22-12": {
        "prompt": "Human: 长城有多长？ Assistant:",
        "chosen": " 这段虚构的文字说长城非常长。",
        "rejected": " 熊猫喜欢吃竹子。",
    },
    "Hello-SimpleAI/HC3-Chinese": {
        "prompt": "Human: 什么是光合作用？ Assistant:",
        "completion": " 植物利用阳光把水和二氧化碳变成养分。",
    },
    "mkqa-Chinese": {"prompt": "Human: 一周有几天 Assistant:", "completion": " 七天"},
    "mkqa-Japanese": {"prompt": "Human: 一週間は何日 Assistant:", "completion": " 七日"},
    "Cohere/miracl-ja-queries-22-12": {
        "prompt": "Human: 富士山の高さは？ Assistant:",
        "chosen": " この架空の文では富士山はとても高いと述べる。",
        "rejected": " 猫は魚が好きです。",
    },
    "lmqg/qg_jaquad": {
        "prompt": "Human: 架空の町の名前は？ Assistant:",
        "completion": " その町は緑ヶ丘と呼ばれている。",
    },
    "lmqg/qag_jaquad": {"prompt": "Human: 駅はどこ？ Assistant:", "completion": " 駅は町の中心にあり、朝六時に開く。"},
}
EXPECTED_FIRST["Dahoas/full-hh-rlhf"] = EXPECTED_FIRST["Dahoas/rm-static"]
# (train records used, eval records, filtered) over the whole fixture, data_split giving one step everything.
EXPECTED_COUNTS = {
    "Dahoas/rm-static": (6, 2, 0),
    "Dahoas/full-hh-rlhf": (6, 2, 0),
    "Dahoas/synthetic-instruct-gptj-pairwise": (5, 0, 0),
    "yitingxie/rlhf-reward-datasets": (4, 1, 0),
    "openai/webgpt_comparisons": (4, 0, 1),
    "stanfordnlp/SHP": (4, 1, 0),
    "wangrui6/Zhihu-KOL": (3, 0, 0),
    "Cohere/miracl-zh-queries-22-12": (3, 1, 1),
    "Hello-SimpleAI/HC3-Chinese": (3, 0, 1),
    "mkqa-Chinese": (3, 0, 1),
    "mkqa-Japanese": (3, 0, 1),
    "Cohere/miracl-ja-queries-22-12": (3, 1, 0),
    "lmqg/qg_jaquad": (3, 1, 0),
    "lmqg/qag_jaquad": (3, 1, 1),
}


def first_row(name):
    folder = FIXTURE_FOLDERS[name]
    pattern = get_adapter(name).local_file_pattern
    files = sorted(
        path
        for path in folder.glob(pattern)
        if path.is_file() and "train" in path.name or path.name in ("all.jsonl", "mkqa.jsonl")
    )
    return json.loads(files[0].read_text(encoding="utf-8").splitlines()[0])


def test_all_ds_chat_names_are_registered():
    assert set(DS_CHAT_NAMES) <= set(registered_names())
    assert len(DS_CHAT_ADAPTERS) == len(DS_CHAT_NAMES)


@pytest.mark.parametrize("name", DS_CHAT_NAMES)
def test_adapter_converts_first_row(name):
    assert get_adapter(name).convert_row(first_row(name)) == EXPECTED_FIRST[name]


@pytest.mark.parametrize("name", DS_CHAT_NAMES)
def test_local_copy_through_load_step_datasets(name):
    adapter = get_adapter(name)
    step = 1 if adapter.kind == "sft" else 2
    args = DataArguments(
        datasets=[f"{name}@{FIXTURE_FOLDERS[name]}"], data_split="1,1,1" if step == 1 else "0,1,0", eval_split_ratio=0
    )
    loaded = load_step_datasets(args, step)
    train_count, eval_count, filtered = EXPECTED_COUNTS[name]
    assert len(loaded.train) == train_count
    assert (len(loaded.eval) if loaded.eval is not None else 0) == eval_count
    assert loaded.summary.total_filtered == filtered
    expected_columns = {"prompt", "completion"} if step == 1 else {"prompt", "chosen", "rejected"}
    assert set(loaded.train.column_names) == expected_columns
    assert EXPECTED_FIRST[name]["prompt"] in loaded.train["prompt"]


def test_path_ending_in_registered_name_uses_its_adapter():
    loaded = load_step_datasets(DataArguments(datasets=[str(HUB / "stanfordnlp" / "SHP")], data_split="0,1,0"), 2)
    assert "Human: Why do onions make people cry? Assistant:" in loaded.train["prompt"]
    # Only the validation split is SHP's eval split; its test file is not read.
    assert loaded.eval["prompt"] == ["Human: How do birds navigate? Assistant:"]


def test_sft_only_dataset_is_skipped_for_reward_step():
    args = DataArguments(datasets=[f"wangrui6/Zhihu-KOL@{FIXTURE_FOLDERS['wangrui6/Zhihu-KOL']}", "tiny-sort"])
    loaded = load_step_datasets(args, 2)
    report = loaded.summary.sources[0]
    assert report.train_used == 0 and "not used in step 2" in report.notes[0]


def _fixture_as_dataset_dict(name):
    adapter = get_adapter(name)
    train_rows = [
        json.loads(line)
        for path in sorted(FIXTURE_FOLDERS[name].glob(adapter.local_file_pattern))
        if path.is_file() and not path.name.startswith(("test", "validation", "dev", "open_qa"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    return datasets.DatasetDict({"train": datasets.Dataset.from_list(train_rows)})


@pytest.mark.parametrize("name", ["Dahoas/rm-static", "openai/webgpt_comparisons", "Cohere/miracl-zh-queries-22-12"])
def test_save_to_disk_copy(tmp_path, name):
    _fixture_as_dataset_dict(name).save_to_disk(str(tmp_path / "copy"))
    args = DataArguments(datasets=[f"{name}@{tmp_path / 'copy'}"], data_split="0,1,0", eval_split_ratio=0)
    loaded = load_step_datasets(args, 2)
    assert EXPECTED_FIRST[name] in list(loaded.train)


def test_hub_name_goes_through_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, **_):
        calls.append((path, name))
        return _fixture_as_dataset_dict("Hello-SimpleAI/HC3-Chinese")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_step_datasets(DataArguments(datasets=["Hello-SimpleAI/HC3-Chinese"], eval_split_ratio=0), 1)
    assert calls == [("Hello-SimpleAI/HC3-Chinese", "all")]
    assert len(loaded.train) == 3


def test_offline_hub_miss_explains_local_copy(monkeypatch):
    def offline(*_, **__):
        raise ConnectionError("offline mode is enabled")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataValidationError, match="pass a local copy as 'Dahoas/rm-static@/path/to/copy'"):
        load_step_datasets(DataArguments(datasets=["Dahoas/rm-static"]), 2)


def test_register_a_new_dataset(tmp_path):
    rows = [{"question": f"q{index}?", "good": f"yes {index}", "bad": f"no {index}"} for index in range(10)]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")

    def convert(row):
        return {
            "prompt": f"Human: {row['question']} Assistant:",
            "chosen": " " + row["good"],
            "rejected": " " + row["bad"],
        }

    register_dataset(DatasetAdapter("me/my-pairs", convert, "pairwise", eval_split=None), replace=True)
    loaded = load_step_datasets(
        DataArguments(datasets=[f"me/my-pairs@{path}"], data_split="0,1,0", eval_split_ratio=0), 2
    )
    assert sorted(loaded.train["chosen"]) == sorted(" " + row["good"] for row in rows)
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(DatasetAdapter("me/my-pairs", convert, "pairwise"))


def test_schema_surprise_is_a_validation_error(tmp_path):
    path = tmp_path / "copy.jsonl"
    path.write_text(json.dumps({"history": "x", "human_ref_A": "a", "human_ref_B": "b"}) + "\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match="record 1: unexpected schema .*labels"):
        load_step_datasets(DataArguments(datasets=[f"stanfordnlp/SHP@{path}"]), 2)
