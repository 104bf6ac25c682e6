"""Session fixtures: the tiny tokenizer and models, built locally (nothing is downloaded)."""

from __future__ import annotations

import os
import tempfile

import pytest

# Several test processes share two cores: one thread each avoids OpenMP oversubscription slowing everything down.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Trackio reads its folder once, at import: a session-wide temporary one keeps test runs out of the user's cache.
os.environ.setdefault("TRACKIO_DIR", tempfile.mkdtemp(prefix="rlhf-trl-tests-trackio-"))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from rlhf_trl.tiny.model import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory):
    """The pretrained tiny base model in a folder (the same builder `tiny-base` uses, in a private location)."""
    from rlhf_trl.tiny.model import build_tiny_base

    return build_tiny_base(tmp_path_factory.mktemp("tiny") / "base", steps=60)


@pytest.fixture(scope="session")
def tiny_reward_dir(tmp_path_factory, tiny_base_dir):
    """A sequence-classification model saved from the tiny base (random score head): reward model and critic."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tmp_path_factory.mktemp("tiny") / "reward"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_base_dir, num_labels=1)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_base_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_chat_dir(tmp_path_factory):
    """A tiny Llama-3-style chat model (byte-level BPE, BOS added by tokenizer and template, <|eot_id|> ends a turn),
    pretrained on the chat format of the tiny task: the stand-in for a user's own chat model."""
    from rlhf_trl.tiny.chat_model import build_tiny_chat_base

    return build_tiny_chat_base(tmp_path_factory.mktemp("chat") / "llama", family="llama", steps=60)


@pytest.fixture(scope="session")
def tiny_qwen2_chat_dir(tmp_path_factory):
    """A tiny Qwen2-style chat model (byte-level BPE, no BOS, <|im_end|> ends a turn)."""
    from rlhf_trl.tiny.chat_model import build_tiny_chat_base

    return build_tiny_chat_base(tmp_path_factory.mktemp("chat") / "qwen2", family="qwen2", steps=60)


@pytest.fixture(scope="session")
def tiny_chat_reward_dir(tmp_path_factory, tiny_chat_dir):
    """A sequence-classification model saved from the tiny Llama-style chat model (random score head)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tmp_path_factory.mktemp("chat") / "reward"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_chat_dir, num_labels=1)
    model.config.pad_token_id = AutoTokenizer.from_pretrained(tiny_chat_dir).pad_token_id
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_chat_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_sft_and_reward_dir(tmp_path_factory):
    """Steps 1 and 2 of the tiny recipe, as ``rlhf-trl e2e --step 1 2`` runs them: a folder holding step1_sft and
    step2_reward (and e2e_summary.json with the base and SFT gold scores), shared by step-3 tests."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("tiny-e2e")
    output = root / "run"
    environment = {**os.environ, "RLHF_TRL_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "rlhf_trl.cli", "e2e", "--recipe", "tiny", "--step", "1", "2", "--samples", "0"]
    result = subprocess.run(
        [*command, "--output-dir", str(output)], env=environment, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output


# The longest test files, longest first (seconds on 2 CPU cores, from `pytest --durations`): recipes 270, estimator
# e2e 170, tiny-chat e2e 120, cli 110, install 95, tiny e2e 94. Order changes only the wall time of `make test`.
LONGEST_FILES = (
    "test_recipes.py",
    "test_estimator_e2e.py",
    "test_e2e_chat.py",
    "test_cli.py",
    "test_install.py",
    "test_e2e.py",
)


def pytest_collection_modifyitems(config, items):
    """The longest files run first (the order inside a file is kept): with two test processes and one file per
    process (`make test`), they then start early instead of running alone at the end."""
    rank = {name: position for position, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
