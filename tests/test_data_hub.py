"""Datasets by Hub id: served from a local stand-in for the Hub, loaded through ``datasets.load_dataset`` by the
project's loading code, then loaded again offline from the cache with the server stopped."""

from __future__ import annotations

from pathlib import Path

import datasets.config
import huggingface_hub.constants
import pytest
from hub_server import online_hub, write_dataset_repo  # noqa: F401  (online_hub is a fixture)

from rlhf_trl.data import DataArguments, DataValidationError, load_step_datasets

# Conversational preference pairs with an implicit prompt, as trl-lib/ultrafeedback_binarized stores them.
PAIRS = [
    {
        "chosen": [
            {"role": "user", "content": f"What is {index} + 1?"},
            {"role": "assistant", "content": f"{index + 1}."},
        ],
        "rejected": [
            {"role": "user", "content": f"What is {index} + 1?"},
            {"role": "assistant", "content": "No idea."},
        ],
        "score_chosen": 8.0,
        "score_rejected": 2.0,
    }
    for index in range(30)
]


def test_hub_dataset_online_then_offline_from_cache(online_hub, tmp_path):  # noqa: F811
    repo = write_dataset_repo(tmp_path / "repo", {"train": PAIRS[:24], "test": PAIRS[24:]})
    args = DataArguments(datasets=["me/feedback"], eval_split_ratio=0)
    with online_hub({"me/feedback": repo}) as hub:
        online = load_step_datasets(args, 2)
        assert any("/resolve/" in path and path.endswith("data/train.jsonl") for _, path in hub.requests)
    assert len(online.train) == 24 and len(online.eval) == 6  # whole dataset: only step 2 reads it
    # The implicit prompt (the shared first turn) is split off the conversations.
    rows = {row["prompt"][0]["content"]: row for row in [*online.train, *online.eval]}
    assert rows["What is 3 + 1?"]["prompt"] == [{"role": "user", "content": "What is 3 + 1?"}]
    assert rows["What is 3 + 1?"]["chosen"] == [{"role": "assistant", "content": "4."}]
    assert rows["What is 3 + 1?"]["rejected"] == [{"role": "assistant", "content": "No idea."}]
    report = online.summary.sources[0]
    assert report.source == "me/feedback" and report.taken == "whole dataset: only step 2 reads it"
    assert "preference" in report.format

    # Server gone, offline as the test session is: the same id comes from the datasets cache.
    online_hub.go_offline()
    assert datasets.config.HF_HUB_OFFLINE and huggingface_hub.constants.HF_HUB_OFFLINE
    offline = load_step_datasets(args, 2)
    assert offline.train["prompt"] == online.train["prompt"] and offline.eval["chosen"] == online.eval["chosen"]
    # Step 3 takes the prompts of the same pairs (extra columns stay for reward functions).
    third = load_step_datasets(args, 3)
    assert set(third.train.column_names) == {"prompt", "score_chosen", "score_rejected"} and len(third.train) == 24


def test_hub_dataset_options_config_split_columns(online_hub, tmp_path):  # noqa: F811
    prompts = [{"prompt": f"Say {index}.", "completion": f"{index}", "source": "x"} for index in range(8)]
    repo = write_dataset_repo(tmp_path / "repo", {"train_sft": prompts, "test_sft": prompts[:2]}, config="sft")
    spec = "me/mixed,config=sft,split=train_sft,eval_split=test_sft,columns=prompt+completion"
    with online_hub({"me/mixed": repo}):
        loaded = load_step_datasets(DataArguments(datasets=[spec]), 1)
        with pytest.raises(DataValidationError, match=r"no split 'train' \(splits: train_sft, test_sft\)"):
            load_step_datasets(DataArguments(datasets=["me/mixed,config=sft"]), 1)
        with pytest.raises(DataValidationError, match="me/absent: cannot load 'me/absent' from the Hub"):
            load_step_datasets(DataArguments(datasets=["me/absent"]), 1)
    assert len(loaded.train) == 8 and len(loaded.eval) == 2
    assert loaded.train.column_names == ["prompt", "completion"]
    assert loaded.summary.sources[0].source == "me/mixed,config=sft,split=train_sft,eval_split=test_sft"


def test_uncached_hub_id_offline_is_one_line_error():
    with pytest.raises(DataValidationError) as caught:
        load_step_datasets(DataArguments(datasets=["someone/not-cached"]), 2)
    message = str(caught.value)
    assert "\n" not in message and "not a registered dataset" in message and "cache" in message


def test_reward_step_trains_a_chat_model_on_a_hub_id(online_hub, tmp_path, tiny_chat_dir, capsys):  # noqa: F811
    """The user's path: `rlhf-trl reward --datasets org/name` with conversational pairs and a chat-template model."""
    import json

    from rlhf_trl.scripts.reward import main

    repo = write_dataset_repo(tmp_path / "repo", {"train": PAIRS[:24], "test": PAIRS[24:]})
    output = tmp_path / "reward"
    with online_hub({"me/feedback": repo}):
        recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "reward.yaml"
        arguments = ["--config", str(recipe), "--model_name_or_path", str(tiny_chat_dir)]
        arguments += ["--datasets", "me/feedback", "--output_dir", str(output), "--max_steps", "2"]
        arguments += ["--per_device_train_batch_size", "8", "--use_cpu", "true", "--plots", "false"]
        assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert "me/feedback  train  preference (prompt, chosen, rejected)" in printed
    assert "whole dataset: only step 2 reads it" in printed
    info = json.loads((output / "run_info.json").read_text())
    assert info["datasets"] == ["me/feedback"] and "eval_pair_accuracy" in info["final_metrics"]
