"""``rlhf-trl bench``: the cpu preset runs real PPO steps and reports every field; the file handling, FLOPs formula,
configs and memory-search logic are checked without a GPU."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhf_trl.bench import memory_search, workloads
from rlhf_trl.bench import step3 as bench

FIELDS = [
    "samples/s",
    "tokens/s (prompt + answer)",
    "generated tokens/s",
    "time per step",
    "generation (s per step)",
    "scoring (actor, ref, critic, reward forwards) (s per step)",
    "training (s per step)",
    "peak CPU memory",
    "effective TFLOPs per device",
    "first-update importance ratio, rollout log-probs from generation's logits",
    "Command: `rlhf-trl bench --preset cpu",
    "Device: CPU",
]


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """One real run of the cpu preset (1 measured step), appended to a fresh benchmarks file."""
    folder = tmp_path_factory.mktemp("bench")
    benchmarks, result_json = folder / "BENCHMARKS.md", folder / "result.json"
    argv = ["--preset", "cpu", "--steps", "1", "--benchmarks-file", str(benchmarks), "--result-json", str(result_json)]
    assert bench.main(argv) == 0
    return benchmarks.read_text(), json.loads(result_json.read_text())


def test_cpu_preset_reports_every_field(cpu_run):
    text, result = cpu_run
    assert text.startswith("# Benchmarks")
    assert text.count("## Step 3, preset `cpu`") == 1
    for field in FIELDS:
        assert field in text, field
    assert result["answer_length"] == 32, "min_new_tokens = max_new_tokens must force every answer's length"
    assert result["samples_per_s"] > 0 and result["tokens_per_s"] == pytest.approx(result["samples_per_s"] * 64)
    assert all(seconds > 0 for seconds in result["phase_s"].values())
    assert sum(result["phase_s"].values()) <= result["wall_s"] * 1.01
    assert result["peak_memory_gib"] > 0.05
    assert all(value > 0 for value in result["tflops_per_device"].values())
    assert result["active_backend"] == "hf" and result["processes"] == 1
    # fp32 on CPU: generation's log-probs are those of the update's first forward, so the ratio is 1 and nothing clips.
    ratio = result["first_update_ratio"]
    assert ratio["ratio_mean"] == pytest.approx(1.0, abs=1e-4) and ratio["ratio_max"] == pytest.approx(1.0, abs=1e-3)
    assert ratio["clip_fraction"] == 0.0 and abs(ratio["approx_kl"]) < 1e-6


def test_append_adds_a_section_and_no_append_leaves_the_file_alone(tmp_path, monkeypatch, cpu_run, capsys):
    _, result = cpu_run
    monkeypatch.setattr(bench, "run_benchmark", lambda options: result)  # the measuring itself is tested above
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text("# Benchmarks\n\nearlier results\n")
    assert bench.main(["--preset", "cpu", "--benchmarks-file", str(benchmarks), "--no-append"]) == 0
    assert benchmarks.read_text() == "# Benchmarks\n\nearlier results\n"
    assert "samples/s" in capsys.readouterr().out, "--no-append still prints the section"
    assert bench.main(["--preset", "cpu", "--benchmarks-file", str(benchmarks)]) == 0
    text = benchmarks.read_text()
    assert text.startswith("# Benchmarks\n\nearlier results\n") and text.count("## Step 3, preset `cpu`") == 1


def test_flops_formula():
    flops = workloads.step_flops(actor_params=10, critic_params=3, samples=2, tokens_per_sample=5, epochs=1)
    assert flops == {"generation": 2 * 10 * 10, "scoring": 2 * (20 + 6) * 10, "training": 6 * 13 * 10}


@pytest.mark.parametrize(
    ("name", "parameters"),
    [("opt-125m", 125_239_296), ("opt-350m", 331_196_416), ("opt-1.3b", 1_315_758_080), ("opt-13b", 12_853_473_280)],
)
def test_opt_configs_have_the_published_sizes(name, parameters):
    with torch.device("meta"):  # shapes only, no memory
        model = AutoModelForCausalLM.from_config(workloads.OPT_SIZES[name]())
    assert workloads.parameter_count(model) == parameters


def test_llama_preset_is_about_one_billion_parameters():
    preset = workloads.PRESETS["llama-1b"]
    critic_config = preset.critic()
    critic_config.num_labels = 1
    with torch.device("meta"):
        actor = AutoModelForCausalLM.from_config(preset.actor())
        critic = AutoModelForSequenceClassification.from_config(critic_config)
    assert workloads.parameter_count(actor) == 1_235_814_400  # Llama-3.2-1B
    assert 0.3e9 < workloads.parameter_count(critic) < 0.35e9


def test_random_prompts_tokenize_to_exact_lengths():
    tokenizer = workloads.build_tokenizer(workloads.OPT_SIZES["opt-350m"]())
    assert len(tokenizer) == workloads.OPT_VOCAB
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (workloads.OPT_PAD, workloads.OPT_EOS)
    prompts = workloads.random_prompts(tokenizer, count=3, length=256, seed=0)
    ids = tokenizer(prompts)["input_ids"]
    assert [len(row) for row in ids] == [256, 256, 256]
    assert not set(tokenizer.all_special_ids) & {token for row in ids for token in row}
    assert prompts != workloads.random_prompts(tokenizer, count=3, length=256, seed=1)


def test_largest_fitting_binary_search():
    sizes = list(workloads.OPT_SIZES)
    calls = []

    def fits_up_to(limit):
        def fits(size):
            calls.append(size)
            return sizes.index(size) <= sizes.index(limit)

        return fits

    best, tried = memory_search.largest_fitting(sizes, fits_up_to("opt-13b"))
    assert best == "opt-13b"
    assert tried["opt-13b"] is True and tried["opt-30b"] is False
    assert len(calls) <= 4, "a binary search over 8 sizes needs at most 4 trials"
    assert memory_search.largest_fitting(sizes, lambda size: False) == (None, {"opt-2.7b": False, "opt-350m": False,
                                                                       "opt-125m": False})  # fmt: skip
    assert memory_search.largest_fitting(sizes, lambda size: True)[0] == "opt-66b"


def test_trial_commands(tmp_path):
    offload = memory_search.trial_command(
        "opt-13b", "lora-zero3-offload", tmp_path / "r.json", lora_rank=128, batch_size=4
    )
    assert offload[offload.index("--config_file") + 1].endswith("zero3_offload.yaml")
    assert offload[offload.index("--num_processes") + 1] == "1"
    assert offload[offload.index("-m", offload.index("--config_file")) + 1] == "rlhf_trl.bench.step3"
    assert "--load-in-8bit" not in offload and offload[offload.index("--lora-rank") + 1] == "128"
    eight_bit = memory_search.trial_command("opt-13b", "lora-8bit", tmp_path / "r.json", lora_rank=128, batch_size=4)
    assert eight_bit[eight_bit.index("--config_file") + 1].endswith("single_gpu.yaml")
    assert "--load-in-8bit" in eight_bit and "--bf16" in eight_bit
    with pytest.raises(ValueError, match="unknown memory mode"):
        memory_search.trial_command("opt-13b", "fp4", tmp_path / "r.json", lora_rank=128, batch_size=4)


def test_run_trial_tells_out_of_memory_from_other_failures(tmp_path):
    result = tmp_path / "result.json"
    success = [sys.executable, "-c", f"open({str(result)!r}, 'w').write('{{}}')"]
    assert memory_search.run_trial(success, result) is True
    out_of_memory = [sys.executable, "-c", "raise SystemExit('torch.OutOfMemoryError: CUDA out of memory.')"]
    assert memory_search.run_trial(out_of_memory, tmp_path / "missing.json") is False
    with pytest.raises(RuntimeError, match="other than GPU memory"):
        memory_search.run_trial([sys.executable, "-c", "raise ValueError('bad config')"], tmp_path / "missing.json")


def test_command_line_checks():
    with pytest.raises(SystemExit):
        bench.main(["--load-in-8bit"])  # 8-bit weights cannot train without adapters
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs a CUDA GPU"):
            bench.main(["--memory-search", "--no-append"])


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_opt_preset_on_gpu(tmp_path):
    result_json = tmp_path / "result.json"
    assert bench.main(["--preset", "opt-1.3b", "--steps", "1", "--bf16", "--no-append", "--result-json",
                       str(result_json)]) == 0  # fmt: skip
    result = json.loads(result_json.read_text())
    assert result["answer_length"] == 256 and result["peak_memory_gib"] > 1
