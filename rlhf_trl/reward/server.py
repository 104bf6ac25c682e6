"""Serve a reward model (or a reward function) over HTTP for trainers on other processes or machines.

rlhf-trl serve-reward --model out/reward --port 8000
rlhf-trl serve-reward --function rlhf_trl.tiny.task:gold_scores --port 0     (0: any free port)

It speaks the protocol of ``rlhf_trl.reward.remote`` (POST ``{"prompts", "completions", ...}`` -> ``{"scores"}``;
GET ``/health`` -> ``{"status": "ok"}``) and listens on 127.0.0.1 unless ``--host`` says otherwise: there is no
authentication, so put it behind a proxy that checks the ``Authorization`` header before exposing it. A reward
model scores exactly as it does inside the trainer (``RewardModelScorer``: its own tokenizer and chat template).
The first line on stdout is ``serving <what> at http://HOST:PORT``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

logger = logging.getLogger(__name__)
MAX_BODY_BYTES = 256 * 1024 * 1024


def load_scorer(model: str | None, function: str | None, batch_size: int = 32):
    """The reward callable to serve: a reward model folder, or a reward function spec. Raises ValueError."""
    if function:
        from rlhf_trl.reward.functions import resolve_reward_function

        return resolve_reward_function(function)
    path = Path(model)
    if not path.is_dir():  # before the slow imports, so a typo fails at once
        raise ValueError(f"--model {model}: no such folder")
    import torch

    from rlhf_trl.reward.sources import RewardModelScorer, load_reward_model

    reward_model, tokenizer = load_reward_model(path)
    if torch.cuda.is_available():
        reward_model.to("cuda")
    return RewardModelScorer(reward_model, tokenizer, batch_size)


def make_server(scorer, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server scoring with ``scorer``; requests are scored one at a time (one model, one device)."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path.rstrip("/") == "/health":
                self._reply(200, {"status": "ok"})
            else:
                self._reply(404, {"error": f"no such path {self.path}; POST requests to score, GET /health"})

        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._reply(413, {"error": f"request of {length} bytes is over {MAX_BODY_BYTES}"})
                return
            try:
                request = json.loads(self.rfile.read(length))
            except ValueError:
                self._reply(400, {"error": "the body is not JSON"})
                return
            problem = _request_problem(request)
            if problem:
                self._reply(400, {"error": problem})
                return
            columns = {key: value for key, value in request.items() if key not in ("prompts", "completions")}
            try:
                with lock:
                    scores = list(scorer(prompts=request["prompts"], completions=request["completions"], **columns))
            except Exception as error:  # the client sees the reason in its one-line error; the server keeps serving
                logger.exception("scoring failed")
                self._reply(500, {"error": f"{type(error).__name__}: {error}"})
                return
            self._reply(200, {"scores": [None if score is None else float(score) for score in scores]})

        def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
            logger.debug("%s %s", self.address_string(), format % args)

    return ThreadingHTTPServer((host, port), Handler)


def _request_problem(request) -> str | None:
    if not isinstance(request, dict):
        return 'expected a JSON object {"prompts": [...], "completions": [...]}'
    prompts, completions = request.get("prompts"), request.get("completions")
    if not isinstance(prompts, list) or not isinstance(completions, list):
        return "'prompts' and 'completions' must both be lists"
    if len(prompts) != len(completions):
        return f"{len(prompts)} prompts but {len(completions)} completions"
    return None


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf-trl serve-reward",
        description="Serve a reward model or reward function over HTTP (the remote reward protocol).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="reward model folder (sequence classification, one label; LoRA adapter too)")
    source.add_argument("--function", help="reward function: 'module:function', a dotted path or a TRL name")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free one, printed on start)")
    parser.add_argument("--batch_size", type=int, default=32, help="reward model forward batch size")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        scorer = load_scorer(arguments.model, arguments.function, arguments.batch_size)
        server = make_server(scorer, arguments.host, arguments.port)
    except (ValueError, OSError) as error:  # bad folder or spec (RewardModelError is a ValueError), port in use
        print(f"error: {error}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"serving {arguments.model or arguments.function} at http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
