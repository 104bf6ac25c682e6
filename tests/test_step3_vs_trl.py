"""The step-3 comparison with TRL 1.12's PPOTrainer: parsing of a run's JSON, samples/s and per-round ratios, the
markdown section, the command line, and that the peer script builds the same workload as our builders."""

from __future__ import annotations

import ast
import datetime
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from step3_vs_trl import PEER, RunError, aggregate, format_section, parse_result, verdict  # noqa: E402


def fake_run(step_s, warmup=2, batch=16, phases=None, **extra) -> dict:
    result = {"step_s": step_s, "warmup_steps": warmup, "steps": len(step_s) - warmup, "batch_size": batch, **extra}
    if phases is not None:
        result["phase_s"] = phases
    return result


def printed(result: dict, noise: str = "{'eps': 1, 'loss': 0.3}\nsome log line\n") -> str:
    """What a run prints: log lines (TRL prints Python dicts), then the JSON result on the last line."""
    return noise + json.dumps(result) + "\n"


def test_parse_result_takes_last_json_line_and_recomputes_samples_per_second():
    peer = fake_run([9.0, 5.0, 2.0, 2.0, 4.0], samples_per_s=123.0, versions={"trl": "1.12.0"})
    parsed = parse_result(printed(peer), PEER)
    # 3 measured steps of 16 samples in 8 s; the run's own figure is not trusted
    assert parsed["samples_per_s"] == pytest.approx(48 / 8)
    assert parsed["versions"] == {"trl": "1.12.0"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("no json here\n", "no JSON result"),
        ('{"step_s": [1.0]}\n', "lacks warmup_steps, steps, batch_size"),
        (json.dumps({"step_s": [1.0, 2.0], "warmup_steps": 2, "steps": 1, "batch_size": 16}), "2 step times for 2"),
        (json.dumps({"step_s": [1.0, 0.0], "warmup_steps": 1, "steps": 1, "batch_size": 16}), "positive"),
    ],
)
def test_parse_result_rejects_bad_output(text, message):
    with pytest.raises(RunError, match=message):
        parse_result(text, "trl-1.12")


def make_rounds():
    """Two rounds: ours twice as fast in round 1 (1.0 s steps vs 2.0 s), 1.25x in round 2 (0.8 vs 1.0)."""
    phases = [{"generation": 0.5, "scoring": 0.2, "training": 0.3}] * 4
    first = {
        "default": parse_result(printed(fake_run([5.0, 5.0, 1.0, 1.0], phases=phases)), "default"),
        PEER: parse_result(printed(fake_run([9.0, 9.0, 2.0, 2.0])), PEER),
    }
    second_phases = [{"generation": 0.3, "scoring": 0.1, "training": 0.4}] * 4
    second = {
        "default": parse_result(printed(fake_run([5.0, 5.0, 0.8, 0.8], phases=second_phases)), "default"),
        PEER: parse_result(printed(fake_run([9.0, 9.0, 1.0, 1.0])), PEER),
    }
    return [first, second]


def test_aggregate_takes_ratios_within_each_round():
    summary = aggregate(make_rounds())
    assert summary["samples_per_s"]["default"]["values"] == pytest.approx([16.0, 20.0])
    assert summary["samples_per_s"][PEER]["values"] == pytest.approx([8.0, 16.0])
    ratio = summary["ratio"]["default"]
    assert ratio["values"] == pytest.approx([2.0, 1.25])
    assert (ratio["min"], ratio["max"], ratio["mean"]) == pytest.approx((1.25, 2.0, 1.625))
    assert PEER not in summary["ratio"]
    # warm-up steps are left out of the phase split and of the mean step time
    assert summary["phase_s"]["default"] == pytest.approx({"generation": 0.4, "scoring": 0.15, "training": 0.35})
    assert summary["step_s"]["default"] == pytest.approx(0.9)
    assert summary["step_s"][PEER] == pytest.approx(1.5)


def test_verdict_says_whether_the_target_is_met():
    summary = aggregate(make_rounds())
    assert "**met on average** but not in every round (lowest 1.25x)" in verdict(summary)[0]
    assert "**met** in every round" in verdict(summary, target=1.2)[0]
    assert "**not met** (best round 2.00x)" in verdict(summary, target=2.5)[0]


def test_format_section_lists_rounds_versions_ratio_and_phases():
    rounds = make_rounds()
    rounds[0]["default"].update(versions={"torch": "2.13.0+cpu", "trl": "1.16.0"}, threads=1)
    rounds[0][PEER].update(versions={"trl": "1.12.0"}, unmatched=["one optimizer for actor and critic"])
    when = datetime.datetime(2026, 12, 1, 10, 0, tzinfo=datetime.timezone.utc)
    section = format_section(aggregate(rounds), rounds, "python benchmarks/step3_vs_trl.py", when, "shared", "abc123")
    assert section.startswith("## Step 3 vs TRL 1.12 PPOTrainer (CPU), 2026-12-01 10:00 UTC")
    assert "| 1 | 16.000 | 8.000 | 2.00x |" in section
    assert "| 2 | 20.000 | 16.000 | 1.25x |" in section
    assert "rlhf-trl abc123 (torch 2.13.0+cpu, trl 1.16.0)" in section
    assert "(trl 1.12.0)" in section and "; shared" in section
    assert "1.62x (1.25–2.00)" in section
    assert "0.40 (44%) | 0.15 (17%) | 0.35 (39%)" in section
    assert "- one optimizer for actor and critic" in section


def run(*arguments):
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "step3_vs_trl.py"), *arguments],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


def test_help_and_bad_arguments():
    result = run("--help")
    assert result.returncode == 0 and "--peer-python" in result.stdout and "--rounds" in result.stdout
    assert run("--rounds", "0").returncode == 2
    missing = run("--peer-python", "/nonexistent/python")
    assert missing.returncode == 2 and "setup_venv.sh" in missing.stderr


def test_peer_script_help_runs_without_trl():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "trl_ppo_peer" / "run_trl_ppo.py"), "--help"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "--warmup-steps" in result.stdout


def test_peer_script_builds_our_workload():
    """Same weights, tokenizer and prompts as rlhf_trl.bench.workloads (the peer loads that file, not the package)."""
    import torch
    from step3_profile import shared_preset

    from rlhf_trl.bench.workloads import build_models, build_tokenizer, random_prompts

    spec = importlib.util.spec_from_file_location(
        "run_trl_ppo", REPO / "benchmarks" / "trl_ppo_peer" / "run_trl_ppo.py"
    )
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    tree = ast.parse((REPO / "benchmarks" / "trl_ppo_peer" / "run_trl_ppo.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name.split(".")[0] == "rlhf_trl" for name in imported)

    preset = shared_preset()
    ours = build_models(preset, torch.float32, False, Path("."))
    theirs = peer.build_models()
    for our_model, peer_model in zip(ours, theirs):
        assert our_model.config.to_dict() == peer_model.config.to_dict()
        for (name, ours_tensor), (_, peer_tensor) in zip(
            our_model.state_dict().items(), peer_model.state_dict().items()
        ):
            assert torch.equal(ours_tensor, peer_tensor), name
    our_tokenizer, peer_tokenizer = build_tokenizer(ours[0].config), peer.build_tokenizer(theirs[0].config)
    assert our_tokenizer.get_vocab() == peer_tokenizer.get_vocab()
    assert (peer.PROMPT_LENGTH, peer.ANSWER_LENGTH, peer.BATCH_SIZE) == (
        preset.prompt_length,
        preset.answer_length,
        preset.batch_size,
    )
    assert random_prompts(our_tokenizer, 4, 64, seed=0) == peer.random_prompts(peer_tokenizer, 4, 64, seed=0)
