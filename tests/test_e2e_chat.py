"""Bring your own model and data, as a user does: the tiny sorting task written as conversational jsonl files
(`python -m rlhf_trl.tiny.chat_data`), the same files served as Hub dataset repositories and read back offline from
the cache, and the whole pipeline on a tiny Llama-3-style chat model (`recipes/tiny-chat`) with its quality bar."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import online_hub  # noqa: F401  (a fixture)

from rlhf_trl.tiny.chat_data import main as write_data_main
from rlhf_trl.tiny.task import EVAL_PROMPTS, gold_scores

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE = REPO_ROOT / "recipes" / "tiny-chat"


@pytest.fixture(scope="module")
def chat_data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chat-data") / "tiny-chat"
    assert write_data_main([str(root)]) == 0
    return root


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_data_files_are_trl_conversational_formats(chat_data_dir):
    sizes = {
        name: {split: len(read_jsonl(chat_data_dir / name / f"{split}.jsonl")) for split in ("train", "test")}
        for name in ("sft", "reward", "ppo")
    }
    assert sizes == {
        "sft": {"train": 4000, "test": EVAL_PROMPTS},
        "reward": {"train": 6000, "test": EVAL_PROMPTS},
        "ppo": {"train": 2048, "test": EVAL_PROMPTS},
    }
    sft = read_jsonl(chat_data_dir / "sft" / "train.jsonl")[0]
    assert sft["prompt"][0]["role"] == "user" and sft["completion"][0]["role"] == "assistant"
    pair = read_jsonl(chat_data_dir / "reward" / "test.jsonl")[0]
    assert set(pair) == {"prompt", "chosen", "rejected"}
    assert gold_scores([pair["prompt"]] * 2, [pair["chosen"], pair["rejected"]])[0] == 1.0
    assert gold_scores([pair["prompt"]], [pair["rejected"]])[0] < 1.0
    # Every step evaluates on the same held-out prompts, none of which is trained on.
    held_out = [json.dumps(record["prompt"]) for record in read_jsonl(chat_data_dir / "ppo" / "test.jsonl")]
    assert held_out == [json.dumps(record["prompt"]) for record in read_jsonl(chat_data_dir / "sft" / "test.jsonl")]
    trained = {json.dumps(record["prompt"]) for record in read_jsonl(chat_data_dir / "sft" / "train.jsonl")}
    assert not trained & set(held_out)


def test_data_command_keeps_existing_files(chat_data_dir, capsys):
    before = (chat_data_dir / "sft" / "train.jsonl").read_bytes()
    assert write_data_main([str(chat_data_dir)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "--overwrite" in error and len(error.splitlines()) == 1
    assert (chat_data_dir / "sft" / "train.jsonl").read_bytes() == before


def test_each_step_reads_its_folder_whole(chat_data_dir):
    from rlhf_trl.data import DataArguments, load_step_datasets

    expected = {1: ("sft", 4000), 2: ("reward", 6000), 3: ("ppo", 2048)}
    for step, (folder, count) in expected.items():
        data = load_step_datasets(DataArguments(datasets=[str(chat_data_dir / folder)]), step=step)
        assert (len(data.train), len(data.eval)) == (count, EVAL_PROMPTS)
        assert isinstance(data.train[0]["prompt"], list)


def test_same_data_by_hub_id_then_offline_from_the_cache(chat_data_dir, online_hub, tmp_path):  # noqa: F811
    """The step folders served as Hub dataset repositories (127.0.0.1): a step loads them by id once, then an SFT
    run in a fresh process with HF_HUB_OFFLINE=1 reads them from the cache and never calls the server."""
    import datasets.config

    from rlhf_trl.data import DataArguments, load_step_datasets

    repos = {f"me/tiny-sort-chat-{name}": chat_data_dir / name for name in ("sft", "reward", "ppo")}
    hub = online_hub(repos)
    with hub:
        for step, name in ((1, "sft"), (2, "reward"), (3, "ppo")):
            data = load_step_datasets(DataArguments(datasets=[f"me/tiny-sort-chat-{name}"]), step=step)
            local = load_step_datasets(DataArguments(datasets=[str(chat_data_dir / name)]), step=step)
            assert data.train.to_list() == local.train.to_list()
            assert data.eval.to_list() == local.eval.to_list()
        calls = len(hub.requests)
        environment = {
            **os.environ,
            "HF_HOME": os.environ["HF_HOME"],
            "HF_DATASETS_CACHE": str(datasets.config.HF_DATASETS_CACHE),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "PYTHONPATH": str(REPO_ROOT),
            "OMP_NUM_THREADS": "1",
        }
        output = tmp_path / "sft"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "rlhf_trl.cli",
                "sft",
                "--config",
                str(RECIPE / "sft.yaml"),
                "--datasets",
                "me/tiny-sort-chat-sft",
                "--max_steps",
                "3",
                "--output_dir",
                str(output),
            ],
            env=environment,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert len(hub.requests) == calls, hub.requests[calls:]
    info = json.loads((output / "run_info.json").read_text())
    assert "eval_gold_score" in info["final_metrics"]


@pytest.mark.slow
def test_tiny_chat_e2e_meets_the_quality_bar(tmp_path):
    """`rlhf-trl e2e --recipe recipes/tiny-chat` after writing the data files: base < SFT < PPO on held-out gold."""
    environment = {**os.environ, "RLHF_TRL_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), environment.get("PYTHONPATH", "")])
    assert write_data_main([str(tmp_path / "data" / "tiny-chat")]) == 0
    output = tmp_path / "outputs" / "tiny-chat"
    result = subprocess.run(
        [sys.executable, "-m", "rlhf_trl.cli", "e2e", "--recipe", str(RECIPE), "--deployment-type", "cpu"],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    gold = json.loads((output / "e2e_summary.json").read_text())["gold_score"]
    reward_info = json.loads((output / "step2_reward" / "run_info.json").read_text())
    # Measured in five runs, seeds 42 and 1 (BENCHMARKS.md): SFT +0.72 to +0.77 over the base, pair accuracy 0.98 to
    # 1.0, PPO +0.048 to +0.076 over SFT on 200 held-out prompts (Intel Xeon). On 1000 held-out prompts on an AMD
    # EPYC core, seed 42 gives SFT +0.75, pair accuracy 0.992, PPO +0.027 (one torch thread is deterministic on one
    # CPU model, not across models); the bars sit below the smallest of each.
    assert gold["sft"] > gold["base"] + 0.5, gold
    assert reward_info["final_metrics"]["eval_pair_accuracy"] >= 0.95
    assert gold["ppo"] > gold["sft"] + 0.015, gold
    assert "held-out gold score" in result.stdout
