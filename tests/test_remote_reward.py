"""Remote reward: the JSON-over-HTTP client (retries, one-line errors, no credentials unless asked), the
serve-reward server, and a PPO run trained through a reward server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler

import pytest
from local_server import LocalServer
from ppo_helpers import build

from rlhf_trl.reward.functions import RewardFunction
from rlhf_trl.reward.remote import RemoteReward, RemoteRewardError
from rlhf_trl.reward.server import make_server
from rlhf_trl.reward.sources import load_reward_function

PROMPTS = ["Human: sort 3 1 2 Assistant:", "Human: sort 5 4 Assistant:"]
COMPLETIONS = [" 1 2 3", " 4 5 9"]


class ScriptedServer(LocalServer):
    """A server answering with a script of (status, body) replies, the last repeated; it records each request."""

    def __init__(self, replies, delay_s: float = 0.0):
        self.replies, self.requests = list(replies), []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.requests.append({"headers": dict(self.headers), "body": json.loads(body)})
                status, reply = owner.replies.pop(0) if len(owner.replies) > 1 else owner.replies[0]
                if delay_s:
                    threading.Event().wait(delay_s)
                data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        super().__init__(Handler)
        self.url = f"{self.endpoint}/score"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_protocol_sends_prompts_completions_and_json_columns_and_reads_scores():
    with ScriptedServer([(200, {"scores": [1.5, None]})]) as server:
        reward = load_reward_function(server.url)
        scores = reward(
            prompts=PROMPTS, completions=COMPLETIONS, level=[1, 2], completion_ids=[[5, 6], [7]], log_metric=print
        )
    assert scores == [1.5, None], "null must stay None (not applicable), as from a reward function"
    body = server.requests[0]["body"]
    assert body == {"prompts": PROMPTS, "completions": COMPLETIONS, "level": [1, 2], "completion_ids": [[5, 6], [7]]}
    assert "Authorization" not in server.requests[0]["headers"], "no credentials unless the user sets them"


def test_bare_list_answers_and_conversational_forms_are_accepted():
    prompts = [[{"role": "user", "content": "sort 2 1"}]]
    completions = [[{"role": "assistant", "content": "1 2"}]]
    with ScriptedServer([(200, [0.25])]) as server:
        assert RemoteReward(server.url)(prompts, completions) == [0.25]
    assert server.requests[0]["body"]["completions"] == completions


def test_auth_header_comes_from_the_environment_and_never_into_errors(monkeypatch, caplog):
    secret = "Bearer do-not-print-0123456789"
    monkeypatch.setenv("RLHF_TRL_REWARD_AUTH", secret)
    with ScriptedServer([(503, {"error": "busy"}), (401, {"error": "denied"})]) as server:
        with pytest.raises(RemoteRewardError) as caught:
            RemoteReward(server.url, retries=2, backoff=0.01)(PROMPTS, COMPLETIONS)
    assert [request["headers"]["Authorization"] for request in server.requests] == [secret, secret]
    assert "HTTP 401" in str(caught.value) and server.url in str(caught.value)
    assert "do-not-print" not in str(caught.value) + caplog.text


def test_server_down_fails_after_retries_with_one_line_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}/score"
    with pytest.raises(RemoteRewardError) as caught:
        RemoteReward(url, retries=2, backoff=0.01)(PROMPTS, COMPLETIONS)
    message = str(caught.value)
    assert url in message and "cannot connect" in message and "after 3 attempts" in message
    assert "\n" not in message


def test_server_errors_are_retried_until_success():
    with ScriptedServer([(500, b"boom"), (502, b""), (200, {"scores": [1.0, 2.0]})]) as server:
        assert RemoteReward(server.url, retries=3, backoff=0.01)(PROMPTS, COMPLETIONS) == [1.0, 2.0]
    assert len(server.requests) == 3


def test_client_errors_are_not_retried():
    with ScriptedServer([(400, {"error": "bad field"})]) as server:
        with pytest.raises(RemoteRewardError, match=r"HTTP 400 .*bad field"):
            RemoteReward(server.url, retries=3, backoff=0.01)(PROMPTS, COMPLETIONS)
    assert len(server.requests) == 1


def test_timeouts_are_retried_then_reported():
    with ScriptedServer([(200, {"scores": [1.0, 2.0]})], delay_s=0.5) as server:
        with pytest.raises(RemoteRewardError, match=r"no answer within 0.1 s \(after 2 attempts\)"):
            RemoteReward(server.url, timeout=0.1, retries=1, backoff=0.01)(PROMPTS, COMPLETIONS)
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ({"scores": [1.0]}, "1 scores for 2 completions"),
        ({"scores": [1.0, "high"]}, "score 1 is 'high', not a finite number"),
        ({"scores": [1.0, True]}, "score 1 is True"),
        (b"[1.0, NaN]", "score 1 is nan"),
        (b"<html>oops</html>", "not JSON"),
        ({"rewards": [1, 2]}, "expected"),
    ],
)
def test_wrong_answers_are_one_line_naming_the_url(reply, message):
    with ScriptedServer([(200, reply)]) as server:
        with pytest.raises(RemoteRewardError) as caught:
            RemoteReward(server.url, retries=0)(PROMPTS, COMPLETIONS)
    assert message in str(caught.value) and server.url in str(caught.value)
    assert "\n" not in str(caught.value)


def test_options_from_the_environment(monkeypatch):
    monkeypatch.setenv("RLHF_TRL_REWARD_TIMEOUT", "2.5")
    monkeypatch.setenv("RLHF_TRL_REWARD_RETRIES", "7")
    reward = RemoteReward("http://127.0.0.1:9/score")
    assert (reward.timeout, reward.retries) == (2.5, 7)
    monkeypatch.setenv("RLHF_TRL_REWARD_RETRIES", "many")
    with pytest.raises(ValueError, match="RLHF_TRL_REWARD_RETRIES='many' is not a int"):
        RemoteReward("http://127.0.0.1:9/score")


@pytest.mark.parametrize("url", ["http://user:pw@127.0.0.1:9/", "http:///nohost"])
def test_bad_urls_are_refused_before_any_request(url):
    with pytest.raises(ValueError, match="remote reward"):
        load_reward_function(url)


def shorter_is_better(prompts, completions, **_columns):
    """The rule the test server scores by: fewer words score higher."""
    return [-float(len(completion.split())) for completion in completions]


@pytest.fixture
def rule_server():
    server = make_server(RewardFunction(shorter_is_better))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_server_reports_bad_requests_and_scoring_errors(rule_server):
    def post(body: bytes):
        request = urllib.request.Request(rule_server, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    assert post(b'{"prompts": ["a"], "completions": ["b c"]}') == (200, {"scores": [-2.0]})
    assert post(b"not json")[0] == 400
    status, answer = post(b'{"prompts": ["a"], "completions": []}')
    assert status == 400 and "1 prompts but 0 completions" in answer["error"]
    status, answer = post(b'{"prompts": ["a"], "completions": [5]}')
    assert status == 500 and "AttributeError" in answer["error"], "a failing scorer answers 500 with the reason"
    with urllib.request.urlopen(rule_server + "health", timeout=10) as response:
        assert json.loads(response.read()) == {"status": "ok"}


def test_ppo_raises_the_reward_of_a_remote_server(tmp_path, tiny_base_dir, tiny_reward_dir, rule_server):
    reward = load_reward_function(rule_server)
    trainer = build(
        tmp_path, tiny_base_dir, tiny_reward_dir, reward_model=False, reward_funcs=[reward], max_steps=8, kl_coef=0.0
    )
    trainer.train()
    scores = [record["objective/score"] for record in trainer.log_history]
    assert sum(scores[-2:]) / 2 > scores[0] + 0.5, scores
    samples = [json.loads(line) for line in (tmp_path / "ppo" / "samples.jsonl").read_text().splitlines()]
    last = [sample for sample in samples if sample["step"] == 8]
    # The scores logged are the server's: its rule applied to the logged completions.
    assert [sample["score"] for sample in last] == shorter_is_better(None, [sample["completion"] for sample in last])


def test_serve_reward_command_scores_like_the_trainer(tiny_reward_dir):
    from rlhf_trl.reward.sources import RewardModelScorer, load_reward_model

    command = [sys.executable, "-m", "rlhf_trl.cli", "serve-reward", "--model", str(tiny_reward_dir), "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        # Libraries may log a line or two to stdout while importing (DeepSpeed's accelerator notice) before it.
        line = next(
            (line for line in iter(process.stdout.readline, "") if line.startswith("serving ")), "no serving line"
        )
        assert line.startswith(f"serving {tiny_reward_dir} at http://127.0.0.1:"), line
        remote = RemoteReward(line.split(" at ")[1].strip(), retries=0)(PROMPTS, COMPLETIONS)
    finally:
        process.terminate()
        process.wait(timeout=30)
    model, tokenizer = load_reward_model(tiny_reward_dir)
    local = RewardModelScorer(model, tokenizer)(PROMPTS, COMPLETIONS)
    assert remote == pytest.approx(local, abs=1e-5)
    assert len(set(local)) == 2, "two different answers should score differently"


def test_serve_reward_bad_model_folder_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "rlhf_trl.cli", "serve-reward", "--model", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --model {tmp_path / 'missing'}: no such folder"


def test_a_served_chat_reward_model_scores_like_in_process(tiny_chat_reward_dir):
    from rlhf_trl.reward.server import load_scorer
    from rlhf_trl.reward.sources import RewardModelScorer, load_reward_model

    # TRL's conversational forms, as the trainer hands them to reward sources: message lists travel as JSON.
    prompts = [[{"role": "user", "content": f"sort {digits}"}] for digits in ("3 1 2", "9 8")]
    completions = [[{"role": "assistant", "content": answer}] for answer in ("1 2 3", "9 8 8 8")]
    server = make_server(load_scorer(str(tiny_chat_reward_dir), None))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        remote = load_reward_function(f"http://127.0.0.1:{server.server_address[1]}")(prompts, completions)
    finally:
        server.shutdown()
        server.server_close()
    model, tokenizer = load_reward_model(tiny_chat_reward_dir)
    local = RewardModelScorer(model, tokenizer)(prompts, completions)
    assert remote == pytest.approx(local, abs=1e-5) and len(set(local)) == 2
