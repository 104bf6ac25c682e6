"""``python -m rlhf_trl.bench.memory``: one real measured run of the tiny size (SFT, full fine-tuning) writes every
field; the table, the benchmarks-file handling and the model shapes are checked without running more."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf_trl.bench import memory as bench_memory
from rlhf_trl.bench import memory_child


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One real run: tiny models, SFT with full fine-tuning, 2 optimizer steps, in a child process of its own."""
    folder = tmp_path_factory.mktemp("bench-memory")
    result_json, benchmarks = folder / "result.json", folder / "BENCHMARKS.md"
    benchmarks.write_text("# Benchmarks\n\nearlier results\n")
    argv = ["--size", "tiny", "--pipeline-step", "sft", "--mode", "full", "--steps", "2", "--batch-size", "4"]
    argv += ["--output-json", str(result_json), "--benchmarks-file", str(benchmarks)]
    assert bench_memory.main(argv) == 0
    return json.loads(result_json.read_text()), benchmarks.read_text()


def test_tiny_run_reports_every_field(tiny_run):
    result, _ = tiny_run
    assert result["size"] == "tiny" and result["steps"] == 2 and result["device"].startswith("CPU")
    assert result["parameters"]["causal_lm"] > 0 and result["parameters"]["classifier"] > 0
    (run,) = result["runs"]
    assert set(bench_memory.RUN_FIELDS) <= set(run)
    assert run["step"] == "sft" and run["mode"] == "full" and run["exit_code"] == 0
    assert run["recipe"] == "recipes/tiny/sft.yaml"
    assert run["peak_rss_mib"] > 50, "a Python process with torch holds far more than 50 MiB"
    assert 0 < run["train_peak_rss_mib"] <= run["peak_rss_mib"]
    # Full fine-tuning: the optimizer holds every parameter of the causal LM.
    assert run["trainable_parameters"] == result["parameters"]["causal_lm"]
    assert run["wall_s"] > 0 and run["cuda_peak_allocated_mib"] is None
    assert result["ratios"] == {}, "no ratio without the 8-bit LoRA run"


def test_default_leaves_the_benchmarks_file_alone(tiny_run):
    _, text = tiny_run
    assert text == "# Benchmarks\n\nearlier results\n"


def test_append_adds_one_section(tmp_path, monkeypatch, tiny_run, capsys):
    result, _ = tiny_run
    monkeypatch.setattr(bench_memory, "run_benchmark", lambda options: result)  # measuring is tested above
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text("# Benchmarks\n\nearlier results\n")
    argv = ["--size", "tiny", "--benchmarks-file", str(benchmarks)]
    assert bench_memory.main(argv) == 0
    assert benchmarks.read_text() == "# Benchmarks\n\nearlier results\n"
    assert "| sft | full |" in capsys.readouterr().out, "without --append the section is printed only"
    assert bench_memory.main([*argv, "--append"]) == 0
    text = benchmarks.read_text()
    assert text.startswith("# Benchmarks\n\nearlier results\n")
    assert text.count("## Peak memory, full fine-tuning vs 8-bit LoRA, `tiny`") == 1
    assert "| sft | full |" in text and "python -m rlhf_trl.bench.memory --size tiny" in text


def test_ratios_and_table_rows():
    runs = [
        {"step": "sft", "mode": "full", "exit_code": 0, "peak_rss_mib": 1000.0, "train_peak_rss_mib": 800.0},
        {"step": "sft", "mode": "8bit-lora", "exit_code": 0, "peak_rss_mib": 600.0, "train_peak_rss_mib": 200.0},
        {"step": "reward", "mode": "full", "exit_code": 0, "peak_rss_mib": 900.0, "train_peak_rss_mib": 700.0},
        {"step": "reward", "mode": "8bit-lora", "exit_code": 1, "peak_rss_mib": 500.0, "train_peak_rss_mib": None},
    ]
    assert bench_memory.ratios(runs) == {"sft": {"peak_rss_mib": 0.6, "train_peak_rss_mib": 0.25}}
    for run in runs:
        run.update(trainable_parameters=10, wall_s=1.0)
    result = {"runs": runs, "ratios": bench_memory.ratios(runs)}
    _, rows = bench_memory.table_rows(result)
    assert rows[1][:6] == ["sft", "8bit-lora", "600", "0.60", "200", "0.25"]
    assert rows[3][1] == "8bit-lora (failed, exit 1)"


@pytest.mark.parametrize(("size", "parameters"), [("opt-125m", 125_239_296), ("opt-350m", 331_196_416)])
def test_opt_sizes_keep_the_published_parameter_counts(size, parameters):
    tokenizer, config = bench_memory.model_config(size)
    assert len(tokenizer) == config.vocab_size == 50272
    assert config.pad_token_id == tokenizer.pad_token_id != config.eos_token_id == tokenizer.eos_token_id
    with torch.device("meta"):  # shapes only, no memory
        model = AutoModelForCausalLM.from_config(config)
    assert sum(parameter.numel() for parameter in model.parameters()) == parameters


def test_padded_tokenizer_round_trips_filler_and_task_words():
    tokenizer = bench_memory.padded_tokenizer(100)
    ids = tokenizer("Human: sort 3 1 Assistant: w57 w99")["input_ids"]
    assert tokenizer.unk_token_id not in ids and ids[-2:] == [57, 99]
    assert tokenizer.decode(ids) == "Human: sort 3 1 Assistant: w57 w99"


def test_child_reads_its_own_high_water_mark():
    """The child's VmHWM leaves out the parent's memory, which the child's ru_maxrss would count."""
    code = "from rlhf_trl.bench.memory_child import status_kib; print(status_kib('VmHWM'))"
    before = memory_child.status_kib("VmHWM")
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0 < child and before > 0
    assert memory_child.reset_peak_rss() and memory_child.status_kib("VmHWM") <= before


def test_help_and_bad_steps(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_memory.main(["--help"])
    assert exit_info.value.code == 0 and "--size" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        bench_memory.main(["--steps", "1"])
    assert exit_info.value.code == 2
