"""report_to for PPO: TensorBoard event files and a W&B offline run hold exactly the curves of metrics.jsonl, the run
configuration and tables of sample completions; a missing tracker package stops the run at start with one line;
the progress bar follows the steps."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import Dataset
from ppo_helpers import build, config

from rlhf_trl.ppo import run_logger
from rlhf_trl.tiny.chat_model import conversational_records

needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed (extra: tensorboard)"
)
needs_wandb = pytest.mark.skipif(
    importlib.util.find_spec("wandb") is None, reason="wandb not installed (extra: wandb)"
)


def metrics_lines(output_dir):
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def event_scalars(log_dir):
    """Every scalar curve in a TensorBoard run folder, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = [path for path in log_dir.iterdir() if path.is_dir()]
    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    curves = {tag: {event.step: event.value for event in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    texts = {tag: events.Tensors(tag) for tag in events.Tags()["tensors"]}
    return curves, texts


def assert_curves_match(curves, lines):
    logged = {key for line in lines for key in line if key != "step"}
    assert logged <= set(curves), logged - set(curves)
    for key in logged:
        expected = {line["step"]: line[key] for line in lines if key in line}
        assert curves[key] == pytest.approx(expected, rel=1e-6, abs=1e-6), key


@needs_tensorboard
def test_tensorboard_curves_equal_metrics_jsonl(tmp_path, tiny_base_dir, tiny_reward_dir):
    trainer = build(tmp_path, tiny_base_dir, tiny_reward_dir, report_to=["tensorboard"], max_steps=3)
    trainer.train()
    output_dir = tmp_path / "ppo"
    lines = metrics_lines(output_dir)
    assert [line["step"] for line in lines] == [1, 2, 3]
    curves, texts = event_scalars(output_dir / "runs")  # logging_dir defaults to output_dir/runs, as Trainer
    assert_curves_match(curves, lines)
    assert "objective/gold_score" in curves
    # A table of samples every logging step: prompt, completion, reward score and gold score.
    assert len(texts["samples/text_summary"]) == 3
    table = texts["samples/text_summary"][-1].tensor_proto.string_val[0].decode()
    assert table.startswith("| prompt | completion | score | gold_score |")
    samples = [json.loads(line) for line in (output_dir / "samples.jsonl").read_text().splitlines()]
    assert samples[-1]["completion"].strip().replace("|", "\\|").replace("\n", "<br>") in table


@needs_tensorboard
def test_logging_dir_and_run_name_place_the_events(tmp_path, tiny_base_dir, tiny_reward_dir):
    where = tmp_path / "elsewhere"
    trainer = build(
        tmp_path, tiny_base_dir, tiny_reward_dir, report_to="tensorboard", logging_dir=str(where), run_name="r1"
    )
    trainer.train()
    assert list((where / "r1").glob("events.out.tfevents.*"))
    assert not (tmp_path / "ppo" / "runs").exists()


@needs_tensorboard
def test_chat_model_run_with_conversational_prompts_reaches_tensorboard(tmp_path, tiny_chat_dir, tiny_chat_reward_dir):
    train = Dataset.from_list([{"prompt": record["prompt"]} for record in conversational_records("ppo", 16)])
    trainer = build(
        tmp_path,
        tiny_chat_dir,
        tiny_chat_reward_dir,
        train=train,
        report_to=["tensorboard"],
        max_steps=2,
        max_prompt_length=48,
    )
    trainer.train()
    lines = metrics_lines(tmp_path / "ppo")
    curves, texts = event_scalars(tmp_path / "ppo" / "runs")
    assert_curves_match(curves, lines)
    table = texts["samples/text_summary"][-1].tensor_proto.string_val[0].decode()
    assert '"role": "user"' in table  # conversational prompts are shown as their messages


def wandb_log_records(data: bytes):
    """Records of a .wandb file: a 7-byte header, then LevelDB-log blocks of 32 KiB whose records (4-byte checksum,
    2-byte length, 1-byte type: full, first, middle, last) carry serialized protobufs."""
    block, position, pieces = 32768, 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # block trailer padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        if kind == 0:
            break
        pieces += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            yield pieces
            pieces = b""


@needs_wandb
def test_wandb_offline_run_holds_the_metrics_and_config(tmp_path, tiny_base_dir, tiny_reward_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    trainer = build(tmp_path, tiny_base_dir, tiny_reward_dir, report_to=["wandb"], run_name="wb", max_steps=2)
    trainer.train()
    runs = list((tmp_path / "ppo" / "runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    (log_file,) = runs[0].glob("*.wandb")
    # W&B's writer process may still be closing the file when finish() returns: wait for its exit record.
    for _ in range(100):
        records = []
        try:
            for data in wandb_log_records(log_file.read_bytes()):
                records.append(wandb_internal_pb2.Record())
                records[-1].ParseFromString(data)
        except DecodeError:  # a record being written
            pass
        if any(record.WhichOneof("record_type") == "exit" for record in records):
            break
        time.sleep(0.1)
    history, config_keys = {}, set()
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history[record.history.step.num] = row
        elif record.WhichOneof("record_type") == "config":
            config_keys |= {item.key for item in record.config.update}
    # A W&B Table of samples per logging step, with the reward and gold scores.
    tables = sorted((runs[0] / "files" / "media" / "table").glob("samples_*.table.json"))
    assert len(tables) == 2
    table = json.loads(tables[-1].read_text())
    assert table["columns"] == ["prompt", "completion", "score", "gold_score"]
    assert len(table["data"]) == 4 and all(isinstance(row[3], float) for row in table["data"])
    lines = metrics_lines(tmp_path / "ppo")
    for line in lines:
        for key, value in line.items():
            if key != "step":
                assert history.get(line["step"], {}).get(key) == pytest.approx(value, rel=1e-6), (key, sorted(history))
    assert {"learning_rate", "critic_learning_rate", "kl_coef"} <= config_keys
    assert "hub_token" not in config_keys


@pytest.mark.skipif(importlib.util.find_spec("trackio") is None, reason="trackio not installed (extra: trackio)")
def test_trackio_local_run_holds_the_metrics_and_config(tmp_path, tiny_base_dir, tiny_reward_dir):
    import sqlite3

    trainer = build(tmp_path, tiny_base_dir, tiny_reward_dir, report_to="trackio", run_name="tk", max_steps=2)
    trainer.train()
    # TRACKIO_DIR is set for the whole session (conftest.py): trackio reads it once, at import.
    database = sqlite3.connect(Path(os.environ["TRACKIO_DIR"]) / "huggingface.db")  # the project is `project`
    rows = database.execute("select step, metrics from metrics where run_name = 'tk' order by step").fetchall()
    lines = metrics_lines(tmp_path / "ppo")
    assert [step for step, _ in rows] == [line["step"] for line in lines]
    for (_, logged), line in zip(rows, lines):
        logged = json.loads(logged)
        assert all(logged[key] == pytest.approx(value) for key, value in line.items() if key != "step")
    (config_text,) = database.execute("select config from configs where run_name = 'tk'").fetchone()
    recorded = json.loads(config_text)
    assert recorded["kl_coef"] == 0.1 and recorded["max_new_tokens"] == 6 and "hub_token" not in recorded


def test_missing_tracker_package_is_one_line_naming_the_extra(tmp_path):
    # A tracker package that cannot be imported, in a subprocess so this interpreter keeps its modules.
    code = (
        "import importlib.util, sys\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'wandb' else real(name, *a)\n"
        "from rlhf_trl.scripts.ppo import cli\n"
        f"sys.exit(cli(['--output_dir', {str(tmp_path / 'out')!r}, '--report_to', 'wandb', '--use_cpu', 'true',"
        " '--reward_funcs', 'rlhf_trl.tiny.task:gold_scores', '--model_name_or_path', 'x',"
        " '--datasets', 'tiny-sort']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    message = [line for line in result.stderr.splitlines() if "wandb" in line]
    assert len(message) == 1 and "rlhf-trl[wandb]" in message[0] and "Traceback" not in result.stderr


def test_unknown_tracker_is_refused(tmp_path):
    with pytest.raises(ValueError, match="report_to 'comet_ml' is not supported"):
        config(tmp_path, report_to=["comet_ml"])


def test_run_config_has_scalars_and_no_token(tmp_path):
    values = run_logger.run_config(config(tmp_path, hub_token="secret-value", reward_funcs=["a:b"]))
    assert "hub_token" not in values and "secret-value" not in json.dumps(values)
    assert values["reward_funcs"] == '["a:b"]' and values["kl_coef"] == 0.1
    assert all(value is None or isinstance(value, (bool, int, float, str)) for value in values.values())


def test_progress_bar_follows_steps_and_shows_metrics(tmp_path, tiny_base_dir, tiny_reward_dir, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    trainer = build(tmp_path, tiny_base_dir, tiny_reward_dir, max_steps=2)
    trainer.train()
    bar = trainer.run_logger.progress
    assert trainer.run_logger.shows_progress and bar.n == 2 and bar.total == 2
    assert "score=" in bar.postfix and "kl=" in bar.postfix


def test_progress_bar_off_without_terminal_or_with_disable_tqdm(tmp_path, tiny_base_dir, tiny_reward_dir, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    trainer = build(tmp_path, tiny_base_dir, tiny_reward_dir, max_steps=1, disable_tqdm=True)
    trainer.train()
    assert not trainer.run_logger.shows_progress
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    trainer = build(tmp_path / "b", tiny_base_dir, tiny_reward_dir, max_steps=1)
    trainer.train()
    assert not trainer.run_logger.shows_progress


def test_gold_scores_are_optional_in_the_sample_table():
    table = run_logger.markdown_table([["p | q", "a\nb", 1.5, None]])
    assert table.splitlines()[-1] == "| p \\| q | a<br>b | 1.5000 |  |"
