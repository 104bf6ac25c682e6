"""Model card and Hub push against a local stand-in for the Hub API (127.0.0.1 only): what arrives, the merged
LoRA weights, one-line errors, and a local checkpoint left byte-identical whatever happens."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import yaml
from local_server import LocalServer
from peft import LoraConfig, get_peft_model
from safetensors.torch import load as load_safetensors
from transformers import OPTForCausalLM

from rlhf_trl.reporting.hub import HubPushError, main, push_to_hub
from rlhf_trl.reporting.model_card import is_hub_id, render_model_card, write_model_card
from rlhf_trl.tiny.model import build_config, build_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "hub"
STEP_SECRET = "hf_StepSecret0123456789abcdef"
MAX_REQUESTS = 50  # a push is a handful of calls; more means a retry loop


class FakeHub(LocalServer):
    """Just enough of the Hub API for ``create_repo`` and ``upload_folder``; records every request.

    ``failures`` maps an endpoint name (create, validate, preupload, commit) to the HTTP status it answers with.
    Every file is declared a "regular" upload, so its content arrives base64-encoded inside the commit.
    """

    def __init__(self, failures: dict[str, int] | None = None):
        self.failures = failures or {}
        self.requests: list[tuple[str, str]] = []
        self.created: list[dict] = []
        self.commits: list[dict] = []
        self.files: dict[str, bytes] = {}
        super().__init__(self._handler_class())

    def endpoint_name(self, path: str) -> str:
        parts = path.strip("/").split("/")
        if path == "/api/repos/create":
            return "create"
        if path == "/api/validate-yaml":
            return "validate"
        if len(parts) >= 5 and parts[:2] == ["api", "models"] and parts[-2] in ("preupload", "commit"):
            return parts[-2]
        return "unknown"

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        self.requests.append((method, path))
        if len(self.requests) > MAX_REQUESTS:
            return 429, {"error": "too many requests in one test"}
        name = self.endpoint_name(path)
        if name in self.failures:
            return self.failures[name], {"error": f"fake hub refuses {name}"}
        if method != "POST" or name == "unknown":
            return 404, {"error": f"fake hub has no {method} {path}"}
        if name == "create":
            payload = json.loads(body)
            self.created.append(payload)
            repo_id = (
                f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            )
            return 200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id}
        if name == "validate":
            return 200, {"errors": [], "warnings": []}
        if name == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        self.commits.append(lines[0]["value"])
        for line in lines[1:]:
            if line["key"] == "file":
                self.files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
        repo_id = "/".join(urlparse(path).path.strip("/").split("/")[2:-2])
        return 200, {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{'a' * 40}", "commitOid": "a" * 40}

    def _handler_class(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, payload = hub.answer(self.command, urlparse(self.path).path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_HEAD = _serve

            def log_message(self, *_):  # keep the test output clean
                pass

        return Handler


@pytest.fixture(autouse=True)
def local_hub_only(monkeypatch):
    """The test session runs offline (conftest). These tests lift that for the Hub client but let it reach
    127.0.0.1 only, with a timeout: any other address fails the request at once (no retries)."""
    import huggingface_hub.constants
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    def refuse_other_hosts(request) -> None:
        if request.url.host != "127.0.0.1":
            raise RuntimeError(f"test blocked a request to {request.url}")

    def local_client():
        hooks = {"request": [refuse_other_hosts, _http.hf_request_event_hook]}
        return _http.httpx2.Client(event_hooks=hooks, follow_redirects=True, timeout=30)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    set_client_factory(local_client)
    yield
    set_client_factory(_http.default_client_factory)


def fingerprint(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (with its relative path): equal fingerprints = byte-identical."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture()
def full_checkpoint(tmp_path) -> Path:
    """An SFT-like output folder: tiny model, tokenizer, run_info.json, metrics, a plot and a trainer checkpoint."""
    folder = tmp_path / "step1_sft"
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    OPTForCausalLM(build_config(tokenizer, hidden_size=16)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shutil.copy(FIXTURES / "run_info_sft.json", folder / "run_info.json")
    (folder / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (folder / "plots").mkdir()
    (folder / "plots" / "loss.png").write_bytes(b"\x89PNG fake")
    (folder / "checkpoint-5").mkdir()
    (folder / "checkpoint-5" / "optimizer.pt").write_bytes(b"resume state")
    (folder / "README.md").write_text("old card\n")
    return folder


@pytest.fixture()
def adapter_checkpoint(tmp_path) -> tuple[Path, dict]:
    """A LoRA output folder on a local base model; returns it and the expected merged state dict."""
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    OPTForCausalLM(build_config(tokenizer, hidden_size=16)).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    base = OPTForCausalLM.from_pretrained(tmp_path / "base")  # so the adapter records where its base lives
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, config)
    folder = tmp_path / "step1_sft_lora"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    info = json.loads((FIXTURES / "run_info_sft.json").read_text())
    info.update(base_model=str(tmp_path / "base"), lora=True)
    (folder / "run_info.json").write_text(json.dumps(info))
    merged = {name: tensor.clone() for name, tensor in model.merge_and_unload().state_dict().items()}
    return folder, merged


def split_card(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    _, metadata, body = text.split("---\n", 2)
    return yaml.safe_load(metadata), body


def test_model_card_front_matter_and_lineage(tmp_path):
    shutil.copy(FIXTURES / "run_info_sft.json", tmp_path / "run_info.json")
    path = write_model_card(tmp_path)
    assert path == tmp_path / "README.md"
    metadata, body = split_card(path.read_text())
    assert metadata["library_name"] == "transformers"
    assert metadata["base_model"] == "facebook/opt-350m"
    assert metadata["tags"] == ["rlhf-trl", "trl", "sft"]
    assert metadata["datasets"] == ["Dahoas/rm-static"]  # local files and project names stay out of the metadata
    assert "data/local_pairs.jsonl" in body and "tiny" in body and "2,4,4" in body
    assert "| learning_rate | 9.65e-06 |" in body and "| per_device_train_batch_size | 8 |" in body
    assert "| logging_steps | 10 |" in body  # in the folded full list
    assert "| eval_gold_score | 0.75 |" in body and "| wall time (s) | 2900 |" in body
    assert "rlhf-trl sft --config recipes/opt-350m/sft.yaml --learning_rate 9.65e-6" in body
    assert "AutoModelForCausalLM" in body


def test_model_card_of_adapter_and_without_run_info(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    metadata, body = split_card(render_model_card(tmp_path))
    assert metadata == {"library_name": "peft", "tags": ["rlhf-trl", "trl"]}
    assert "not recorded" in body and "AutoPeftModelForCausalLM" in body


def test_hub_id_recognition(tmp_path):
    assert is_hub_id("Dahoas/rm-static") and is_hub_id("facebook/opt-1.3b")
    assert not is_hub_id("tiny") and not is_hub_id("data/pairs.json") and not is_hub_id(str(tmp_path))
    assert not is_hub_id(None)


def test_push_uploads_checkpoint_and_fresh_card(full_checkpoint, monkeypatch):
    before = fingerprint(full_checkpoint)
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        url = push_to_hub(full_checkpoint, "alice/tiny-sft", private=True, token="hf_test_token")
    assert url == f"{hub.endpoint}/alice/tiny-sft"
    assert hub.created == [{"name": "tiny-sft", "organization": "alice", "visibility": "private", "type": "model"}]
    expected = {name for name in before if not name.startswith("checkpoint-")}
    assert set(hub.files) == expected  # README.md is replaced, the trainer checkpoint stays local
    for name in expected - {"README.md", "run_info.json"}:
        assert hub.files[name] == (full_checkpoint / name).read_bytes(), name
    assert json.loads(hub.files["run_info.json"]) == json.loads((full_checkpoint / "run_info.json").read_text())
    metadata, body = split_card(hub.files["README.md"].decode())
    assert metadata["tags"] == ["rlhf-trl", "trl", "sft"] and "![loss](plots/loss.png)" in body
    assert hub.commits[0]["summary"] == "rlhf-trl: upload sft output step1_sft"
    assert len(hub.requests) <= 6
    assert fingerprint(full_checkpoint) == before


def test_push_sends_the_allow_list_only(full_checkpoint, tmp_path, monkeypatch, capsys):
    """Tracker logs, private evaluation files, training_args.bin, trainer checkpoints and links out of the folder
    stay on the machine; the files sent are printed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "private.png").write_bytes(b"private plot")
    (outside / "secret.json").write_text("private")
    (full_checkpoint / "wandb").mkdir()
    (full_checkpoint / "wandb" / "debug.log").write_text("api key here")
    (full_checkpoint / "eval_scores.json").write_text("[1, 2]")
    (full_checkpoint / "samples.jsonl").write_text("{}\n")
    (full_checkpoint / "training_args.bin").write_bytes(b"pickled arguments")
    (full_checkpoint / "plots" / "leak.png").symlink_to(outside / "private.png")
    (full_checkpoint / "vocab.json").symlink_to(outside / "secret.json")  # an allowed name, pointing outside
    (full_checkpoint / "critic").symlink_to(outside, target_is_directory=True)
    (full_checkpoint / "merges.txt").write_text("#merges\n")
    (full_checkpoint / "special_tokens_map.json").symlink_to(full_checkpoint / "merges.txt")  # inside: followed
    (full_checkpoint / "ema").mkdir()
    (full_checkpoint / "ema" / "config.json").write_text("{}")
    (full_checkpoint / "ema" / "notes.txt").write_text("not a model file")
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        push_to_hub(full_checkpoint, "alice/tiny-sft", token="hf_test_token")
    assert set(hub.files) == {
        "README.md",
        "run_info.json",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "merges.txt",
        "special_tokens_map.json",
        "metrics.jsonl",
        "plots/loss.png",
        "ema/config.json",
    }
    assert hub.files["special_tokens_map.json"] == b"#merges\n"
    printed = capsys.readouterr().out
    assert "uploading to alice/tiny-sft: README.md, config.json" in printed
    for kept in ("checkpoint-5/", "wandb/", "eval_scores.json", "training_args.bin", "samples.jsonl", "critic/"):
        assert kept in printed.split("kept local")[1], kept


def test_push_of_the_current_folder(full_checkpoint, monkeypatch):
    """`rlhf-trl push .` from inside the output folder."""
    monkeypatch.chdir(full_checkpoint)
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        assert main([".", "--hub_model_id", "alice/here"]) == 0
    assert "model.safetensors" in hub.files


def test_secrets_of_an_older_run_info_are_not_uploaded(full_checkpoint, monkeypatch):
    secret = "hf_OldRunSecret0123456789"
    info = json.loads((full_checkpoint / "run_info.json").read_text())
    info["command"] = f"rlhf-trl sft --hub_token {secret} --wandb-api-key=abc123 --seed 1"
    info["hyperparameters"]["hub_token"] = secret
    (full_checkpoint / "run_info.json").write_text(json.dumps(info))
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        push_to_hub(full_checkpoint, "alice/tiny-sft", token="hf_test_token")
    for name, content in hub.files.items():
        assert secret.encode() not in content and b"abc123" not in content, name
    assert "--hub_token '<redacted>' '--wandb-api-key=<redacted>' --seed 1" in hub.files["README.md"].decode()


def test_card_keeps_user_text_inside_its_blocks(tmp_path):
    """A command with a newline and backticks cannot close the code block; table cells cannot break rows."""
    info = json.loads((FIXTURES / "run_info_sft.json").read_text())
    info["command"] = "rlhf-trl sft --run_name 'x\n```\n# Injected heading\n<script>alert(1)</script>'"
    info["base_model"] = "evil | row\n| injected | row |"
    (tmp_path / "run_info.json").write_text(json.dumps(info))
    _, body = split_card(render_model_card(tmp_path))
    lines = body.splitlines()
    start = lines.index("## Command") + 2
    assert lines[start] == "````bash"
    end = lines.index("````", start + 1)
    assert any(line == "# Injected heading" for line in lines[start:end])
    assert "# Injected heading" not in lines[:start] + lines[end:]
    assert "| injected | row |" not in body and "<script>" not in body.split("## Command")[0]


def test_push_with_merge_lora_sends_merged_full_model(adapter_checkpoint, monkeypatch):
    folder, merged = adapter_checkpoint
    before = fingerprint(folder)
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        push_to_hub(folder, "alice/tiny-merged", merge_lora=True, token="hf_test_token", commit_message="merged")
    assert "adapter_config.json" not in hub.files and "adapter_model.safetensors" not in hub.files
    assert {"config.json", "model.safetensors", "tokenizer.json", "run_info.json", "README.md"} <= set(hub.files)
    received = load_safetensors(hub.files["model.safetensors"])
    query = "model.decoder.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(received[query], merged[query])
    base = OPTForCausalLM.from_pretrained(folder.parent / "base").state_dict()
    assert not torch.allclose(received[query], base[query])  # the adapter really changed the weights
    metadata, body = split_card(hub.files["README.md"].decode())
    assert metadata["library_name"] == "transformers" and "merged into its base model" in body
    assert hub.commits[0]["summary"] == "merged"
    assert fingerprint(folder) == before


def test_server_error_gives_one_line_error_and_keeps_checkpoint(full_checkpoint, monkeypatch):
    before = fingerprint(full_checkpoint)
    failures = {name: 500 for name in ("create", "validate", "preupload", "commit")}
    with FakeHub(failures) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        with pytest.raises(HubPushError) as error:
            push_to_hub(full_checkpoint, "alice/tiny-sft", token="hf_test_token")
    message = str(error.value)
    assert "\n" not in message and "alice/tiny-sft" in message and "500" in message
    assert hub.files == {}
    assert fingerprint(full_checkpoint) == before


def test_refused_commit_after_preupload_keeps_checkpoint(adapter_checkpoint, monkeypatch):
    folder, _ = adapter_checkpoint
    before = fingerprint(folder)
    with FakeHub({"commit": 403}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        with pytest.raises(HubPushError, match="403"):
            push_to_hub(folder, "alice/tiny-merged", merge_lora=True, token="hf_test_token")
    assert [name for _, path in hub.requests if (name := hub.endpoint_name(path)) == "preupload"]
    assert fingerprint(folder) == before


def test_local_problems_are_reported_before_any_request(tmp_path, full_checkpoint, monkeypatch):
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        with pytest.raises(HubPushError, match="holds no checkpoint"):
            push_to_hub(tmp_path / "empty", "alice/x", token="hf_test_token")
        with pytest.raises(HubPushError, match="no LoRA adapter"):
            push_to_hub(full_checkpoint, "alice/x", merge_lora=True, token="hf_test_token")
    assert hub.requests == []


def test_push_command_in_a_subprocess(full_checkpoint):
    with FakeHub() as hub:
        environment = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_test_token"}
        environment.update(HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0")
        command = [sys.executable, "-m", "rlhf_trl.reporting.hub", str(full_checkpoint), "--hub_model_id", "bob/tiny"]
        result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == f"{hub.endpoint}/bob/tiny"
        assert hub.created[0]["visibility"] == "public" and "config.json" in hub.files

    with FakeHub({"create": 500}) as hub:
        environment["HF_ENDPOINT"] = hub.endpoint
        result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "bob/tiny" in error_lines[0]


def test_push_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--hub_model_id" in capsys.readouterr().out


def test_a_training_step_pushes_with_push_to_hub(tmp_path, tiny_base_dir):
    """`rlhf-trl sft ... --push_to_hub --hub_model_id` uploads the final checkpoint with its lineage card."""
    recipe = REPO_ROOT / "recipes" / "tiny" / "sft.yaml"
    output = tmp_path / "sft"
    with FakeHub() as hub:
        environment = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_test_token", "OMP_NUM_THREADS": "1"}
        environment.update(HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0")
        command = [
            sys.executable,
            "-m",
            "rlhf_trl.scripts.sft",
            "--config",
            str(recipe),
            "--output_dir",
            str(output),
            "--model_name_or_path",
            str(tiny_base_dir),
            "--max_steps",
            "3",
            "--plots",
            "false",
            "--push_to_hub",
            "--hub_model_id",
            "carol/tiny-sft",
            "--hub_private_repo",
            "true",
            "--hub_token",
            STEP_SECRET,
            "--save_strategy",
            "steps",
            "--save_steps",
            "2",
        ]
        result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert any(created["visibility"] == "private" for created in hub.created)
    assert len(hub.commits) == 1, "one upload: ours, not also the Trainer's of the whole folder"
    assert set(hub.files) == {
        "README.md",
        "run_info.json",
        "metrics.jsonl",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    card = hub.files["README.md"].decode()
    assert "sft" in card and "tiny-sort" in card and "<redacted>" in card
    written = [path for path in output.rglob("*") if path.is_file()]
    assert any(path.name == "training_args.bin" for path in written) and (output / "checkpoint-2").is_dir()
    for path in written:
        assert STEP_SECRET.encode() not in path.read_bytes(), path
    for name, content in hub.files.items():
        assert STEP_SECRET.encode() not in content, name
    assert STEP_SECRET not in result.stdout + result.stderr


@pytest.mark.slow
def test_chat_reward_step_resumes_into_its_folder_and_pushes_the_allow_list(tmp_path, tiny_chat_dir):
    """A Llama-style chat model on conversational pairs: `rlhf-trl reward` with a token, then a resume into the
    same folder (no --overwrite_output_dir) that continues metrics.jsonl and pushes only what a model repo needs."""
    from rlhf_trl.tiny.chat_model import conversational_records

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in conversational_records("reward", 64)))
    output = tmp_path / "reward"
    common = [sys.executable, "-m", "rlhf_trl.scripts.reward", "--config", str(REPO_ROOT / "recipes/tiny/reward.yaml")]
    common += ["--model_name_or_path", str(tiny_chat_dir), "--datasets", str(data), "--output_dir", str(output)]
    common += ["--per_device_train_batch_size", "8", "--logging_steps", "1", "--plots", "false"]
    common += ["--save_strategy", "steps", "--save_steps", "1", "--hub_token", STEP_SECRET]
    with FakeHub() as hub:
        environment = {**os.environ, "HF_ENDPOINT": hub.endpoint, "OMP_NUM_THREADS": "1"}
        environment.update(HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0")
        first = subprocess.run(
            [*common, "--max_steps", "2"], env=environment, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT
        )
        assert first.returncode == 0, first.stderr[-3000:]
        resumed = subprocess.run(
            [*common, "--max_steps", "3", "--resume_from_checkpoint", "true", "--push_to_hub"]
            + ["--hub_model_id", "dave/chat-reward"],
            env=environment,
            capture_output=True,
            text=True,
            timeout=600,
            cwd=REPO_ROOT,
        )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {output / 'checkpoint-2'}" in resumed.stderr
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line and "train_runtime" not in line] == [1, 2, 3]
    assert set(hub.files) == {
        "README.md",
        "run_info.json",
        "metrics.jsonl",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    }
    assert (output / "eval_scores.json").exists() and (output / "training_args.bin").exists()  # kept local
    for path in output.rglob("*"):
        assert not path.is_file() or STEP_SECRET.encode() not in path.read_bytes(), path
    assert all(STEP_SECRET.encode() not in content for content in hub.files.values())
