"""TRL's dataset formats, detected as TRL defines them, each step taking the ones it can use; TRL's and the
alignment-handbook's data keys in a recipe."""

from __future__ import annotations

import json

import pytest
import yaml

from rlhf_trl.data import DataArguments, DataValidationError, load_step_datasets, parse_source_spec


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return str(path)


def load(path, step, **settings):
    settings.setdefault("eval_split_ratio", 0)
    return load_step_datasets(DataArguments(datasets=[path], **settings), step)


def test_language_modelling_text_feeds_step_one_only(tmp_path):
    path = write_jsonl(tmp_path / "lm.jsonl", [{"text": f"Plain text number {index}."} for index in range(6)])
    first = load(path, 1)
    assert first.train.column_names == ["text"] and len(first.train) == 6
    assert first.summary.sources[0].format == "language modelling (text)"
    with pytest.raises(DataValidationError, match="cannot use language modelling"):
        load(path, 2)


def test_text_and_prompt_completion_do_not_mix_in_step_one(tmp_path):
    text = write_jsonl(tmp_path / "lm.jsonl", [{"text": "Some text."}])
    pairs = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "Human: a Assistant:", "completion": " b"}])
    with pytest.raises(DataValidationError, match="step 1 mixes language-modelling records"):
        load_step_datasets(DataArguments(datasets=[text, pairs]), 1)


def test_conversational_implicit_prompt_pairs_in_every_step(tmp_path):
    records = [
        {
            "chosen": [user(f"Name {index}?"), assistant("Ann."), user("Sure?"), assistant("Yes.")],
            "rejected": [user(f"Name {index}?"), assistant("Ann."), user("Sure?"), assistant("No.")],
        }
        for index in range(4)
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", records)
    second = load(path, 2).train[0]
    # The shared first turns are the prompt.
    assert second["prompt"][-1] == user("Sure?") and len(second["prompt"]) == 3
    assert second["chosen"] == [assistant("Yes.")] and second["rejected"] == [assistant("No.")]
    first = load(path, 1).train[0]
    assert first["completion"] == [assistant("Yes.")]  # SFT learns the chosen answer
    assert load(path, 3).train[0]["prompt"][-1] == user("Sure?")


def test_prompt_completion_gives_prompts_to_ppo(tmp_path):
    path = write_jsonl(
        tmp_path / "sft.jsonl", [{"prompt": [user(f"q{i}")], "completion": [assistant("a")]} for i in range(5)]
    )
    third = load(path, 3)
    assert third.train.column_names == ["prompt"] and sorted(row["prompt"][0]["content"] for row in third.train) == [
        "q0",
        "q1",
        "q2",
        "q3",
        "q4",
    ]
    assert third.summary.sources[0].taken == "whole dataset: only step 3 reads it"


def test_conversational_messages_for_sft(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [user("hi"), assistant("hello")]}] * 3)
    assert load(path, 1).train[0]["messages"] == [user("hi"), assistant("hello")]


def test_unknown_format_names_columns_and_expected_formats(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataValidationError) as caught:
        load(path, 1)
    message = str(caught.value)
    assert "\n" not in message
    assert "unknown dataset format (columns: answer, question)" in message
    assert "prompt+completion" in message and "chosen+rejected (implicit prompt)" in message


def test_spec_syntax_options_and_errors():
    spec = parse_source_spec("HuggingFaceH4/ultrafeedback_binarized,config=default,split=train_prefs:0.5")
    assert (spec.name, spec.config, spec.split, spec.weight) == (
        "HuggingFaceH4/ultrafeedback_binarized",
        "default",
        "train_prefs",
        0.5,
    )
    assert parse_source_spec("a/b,columns=chosen+rejected,weight=2").columns == ("chosen", "rejected")
    assert parse_source_spec("a/b,columns=chosen+rejected,weight=2").weight == 2.0
    with pytest.raises(ValueError, match="unknown option"):
        parse_source_spec("a/b,colour=red")
    with pytest.raises(ValueError, match="key=value"):
        parse_source_spec("a/b,split")


def test_local_path_refuses_hub_options(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataValidationError, match="apply to Hub datasets"):
        load(f"{path},split=train", 2)


def parse_recipe(tmp_path, recipe: dict):
    from trl import RewardConfig, TrlParser

    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    parser = TrlParser((RewardConfig, DataArguments))
    arguments = ["--config", str(config), "--output_dir", str(tmp_path / "out"), "--report_to", "none"]
    arguments += ["--use_cpu", "true", "--bf16", "false"]
    return parser.parse_args_and_config(arguments)[1]


def test_trl_script_arguments_keys(tmp_path):
    data = parse_recipe(
        tmp_path,
        {
            "dataset_name": "trl-lib/ultrafeedback_binarized",
            "dataset_config": "default",
            "dataset_train_split": "train",
            "dataset_test_split": "validation",
        },
    )
    (source,) = data.sources
    assert (source.name, source.config, source.split, source.eval_split) == (
        "trl-lib/ultrafeedback_binarized",
        "default",
        None,  # TRL's default split leaves the choice to the source
        "validation",
    )


def test_trl_mixture_and_handbook_mixture_keys(tmp_path):
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"prompt": f"p{index}", "chosen": "a", "rejected": "b", "extra": 1} for index in range(10)],
    )
    trl_mixture = parse_recipe(
        tmp_path,
        {"datasets": [{"path": pairs, "columns": ["prompt", "chosen", "rejected"]}], "test_split_size": 2},
    )
    loaded = load_step_datasets(trl_mixture, 2)
    assert len(loaded.train) == 8 and len(loaded.eval) == 2
    assert set(loaded.train.column_names) == {"prompt", "chosen", "rejected"}

    handbook = parse_recipe(
        tmp_path,
        {
            "dataset_mixture": {
                "datasets": [
                    {
                        "id": "HuggingFaceH4/ultrafeedback_binarized",
                        "config": "default",
                        "split": "train_prefs",
                        "columns": ["chosen", "rejected"],
                        "weight": 1.0,
                    },
                    {
                        "id": "HuggingFaceH4/ultrafeedback_binarized",
                        "config": "default",
                        "split": "test_prefs",
                        "columns": ["chosen", "rejected"],
                        "weight": 0.5,
                    },
                ],
                "seed": 0,
                "test_split_size": 2000,
            }
        },
    )
    first, second = handbook.sources
    assert (first.config, first.split, first.columns) == ("default", "train_prefs", ("chosen", "rejected"))
    assert second.weight == 0.5 and handbook.test_split_size == 2000


def test_trl_fraction_mixes_without_repeats(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"a{index}", "completion": "x"} for index in range(30)])
    second = write_jsonl(tmp_path / "b.jsonl", [{"prompt": f"b{index}", "completion": "y"} for index in range(10)])
    args = DataArguments(
        datasets=[{"path": first, "fraction": 0.5}, {"path": second, "fraction": 0.5}], eval_split_ratio=0
    )
    prompts = load_step_datasets(args, 1).train["prompt"]
    assert sum(prompt.startswith("a") for prompt in prompts) == 10 and len(prompts) == 20
    with pytest.raises(DataValidationError, match="fraction is set for some datasets"):
        load_step_datasets(DataArguments(datasets=[{"path": first, "fraction": 0.5}, second]), 1)


def test_standard_implicit_prompt_without_transcript_markers(tmp_path):
    records = [
        {"chosen": "The sky is blue.", "rejected": "The sky is black."},
        {"chosen": "Human: hi Assistant: hello", "rejected": "Human: hi Assistant: go away"},
    ]
    rows = load(write_jsonl(tmp_path / "pairs.jsonl", records), 2).train
    by_prompt = {row["prompt"]: (row["chosen"], row["rejected"]) for row in rows}
    assert by_prompt == {"The sky is": (" blue.", " black."), "Human: hi Assistant:": (" hello", " go away")}


def test_unpaired_preference_only_gives_prompts(tmp_path):
    records = [{"prompt": f"q{index}", "completion": "bad answer", "label": False} for index in range(4)]
    path = write_jsonl(tmp_path / "unpaired.jsonl", records)
    with pytest.raises(DataValidationError, match="cannot use unpaired preference"):
        load(path, 1)  # SFT must not learn answers labelled bad
    assert load(path, 3).train.column_names == ["prompt"]


def test_trl_builder_with_data_files(tmp_path):
    path = write_jsonl(
        tmp_path / "pairs.jsonl", [{"prompt": f"p{index}", "chosen": "a", "rejected": "b"} for index in range(5)]
    )
    loaded = load_step_datasets(DataArguments(datasets=[{"path": "json", "data_files": path}], eval_split_ratio=0), 2)
    assert sorted(loaded.train["prompt"]) == [f"p{index}" for index in range(5)]
