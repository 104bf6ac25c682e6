"""A reward source on another machine or process: an HTTP(S) endpoint scored over a small JSON protocol.

Protocol (what ``rlhf-trl serve-reward`` speaks):

- request: ``POST <url>`` with ``Content-Type: application/json`` and the body
  ``{"prompts": [...], "completions": [...], <column>: [...], ...}``. Prompts and completions are as the trainer
  gives them to reward functions: strings, or for conversational data TRL's message lists (a prompt is a list of
  ``{"role", "content"}`` messages, a completion ``[{"role": "assistant", "content": ...}]``). Every other keyword
  argument whose value JSON can encode rides along under its own name (dataset columns, ``completion_ids``); the rest
  (``trainer_state``, ``log_metric``, ...) are left out.
- response: status 200 and ``{"scores": [s_1, ..., s_n]}`` (a bare JSON list is accepted too), one number per
  completion in order; ``null`` means "not applicable" as a ``None`` from a reward function does.
- errors: connection errors, timeouts, HTTP 429 and 5xx are retried with exponential backoff; other statuses fail at
  once. Every failure is one line naming the URL and what was wrong (status and the start of the body, a wrong
  count of scores, a score that is not a number, a body that is not JSON).

Options, from the environment (the client never reads or sends credentials otherwise):

- ``RLHF_TRL_REWARD_TIMEOUT``: seconds to wait for one answer (default 60);
- ``RLHF_TRL_REWARD_RETRIES``: retries after the first attempt (default 3; backoff 1 s, 2 s, 4 s, ... capped at 30 s);
- ``RLHF_TRL_REWARD_AUTH``: the value of an ``Authorization`` header to send (e.g. ``Bearer <token>``); it is never
  logged or written anywhere.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

TIMEOUT_VARIABLE, RETRIES_VARIABLE, AUTH_VARIABLE = (
    "RLHF_TRL_REWARD_TIMEOUT",
    "RLHF_TRL_REWARD_RETRIES",
    "RLHF_TRL_REWARD_AUTH",
)
DEFAULT_TIMEOUT_S, DEFAULT_RETRIES, MAX_BACKOFF_S = 60.0, 3, 30.0
# Statuses worth another try: the server is overloaded or restarting, not refusing this request.
RETRY_STATUSES = {429, 500, 502, 503, 504}


class RemoteRewardError(RuntimeError):
    """A remote reward server failed or answered wrongly; the message is one line naming the URL."""


def _option(variable: str, default: float, kind: type) -> float:
    text = os.environ.get(variable)
    if text is None or not text.strip():
        return default
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{variable}={text!r} is not a {kind.__name__}") from None
    if value < 0:
        raise ValueError(f"{variable}={text!r} must not be negative")
    return value


class RemoteReward:
    """Reward function ``f(prompts, completions, **columns) -> list[float | None]`` served at ``url``.

    Args:
        url: http:// or https:// address the requests are POSTed to (no credentials in it).
        timeout: seconds per attempt (default: $RLHF_TRL_REWARD_TIMEOUT or 60).
        retries: further attempts after a retryable failure (default: $RLHF_TRL_REWARD_RETRIES or 3).
        backoff: seconds before the first retry, doubled for each next one (capped at 30 s).
    """

    def __init__(self, url: str, timeout: float | None = None, retries: int | None = None, backoff: float = 1.0):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"remote reward {url!r}: not an http(s) URL")
        if parts.username or parts.password:
            # A URL is logged and saved with the run's arguments: credentials belong in RLHF_TRL_REWARD_AUTH.
            raise ValueError(f"remote reward {parts.hostname}: no credentials in the URL; set {AUTH_VARIABLE}")
        self.url = url
        self.timeout = _option(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT_S, float) if timeout is None else timeout
        self.retries = int(_option(RETRIES_VARIABLE, DEFAULT_RETRIES, int)) if retries is None else retries
        self.backoff = backoff
        # The name keys the per-source metric (objective/score_<name>): letters, digits, dots and underscores only.
        self.__name__ = f"remote_{parts.hostname}_{parts.port or (443 if parts.scheme == 'https' else 80)}"

    def __repr__(self) -> str:
        return f"RemoteReward({self.url})"

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            raise ValueError(f"remote reward {self.url}: {len(prompts)} prompts but {len(completions)} completions")
        body = {"prompts": prompts, "completions": completions}
        for name, value in columns.items():
            if name in body:
                continue
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                continue  # callables and trainer objects stay here
            body[name] = value
        payload = self._post(json.dumps(body).encode())
        return self._parse(payload, len(prompts))

    def _request(self, data: bytes) -> urllib.request.Request:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        auth = os.environ.get(AUTH_VARIABLE)
        if auth:
            headers["Authorization"] = auth
        return urllib.request.Request(self.url, data=data, headers=headers, method="POST")

    def _post(self, data: bytes) -> bytes:
        """The response body of a successful POST, retrying what may pass; raises RemoteRewardError."""
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                with urllib.request.urlopen(self._request(data), timeout=self.timeout) as response:
                    return response.read()
            except urllib.error.HTTPError as error:
                detail = error.read(300).decode("utf-8", "replace").strip().replace("\n", " ")
                problem = f"HTTP {error.code} {error.reason}" + (f": {detail}" if detail else "")
                if error.code not in RETRY_STATUSES:
                    raise RemoteRewardError(f"remote reward {self.url}: {problem}") from None
            except (TimeoutError, socket.timeout):
                problem = f"no answer within {self.timeout:g} s"
            except urllib.error.URLError as error:
                reason = error.reason
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    problem = f"no answer within {self.timeout:g} s"
                else:
                    problem = f"cannot connect ({reason})"
            except (ConnectionError, http.client.HTTPException) as error:  # closed mid-answer: worth a retry
                problem = f"connection failed ({type(error).__name__}: {error})"
            if attempt < attempts:
                delay = min(self.backoff * 2 ** (attempt - 1), MAX_BACKOFF_S)
                logger.warning(
                    "remote reward %s: %s; retry %d/%d in %.1f s", self.url, problem, attempt, self.retries, delay
                )
                time.sleep(delay)
        raise RemoteRewardError(f"remote reward {self.url}: {problem} (after {attempts} attempts)")

    def _parse(self, payload: bytes, expected: int) -> list[float | None]:
        try:
            answer = json.loads(payload)
        except ValueError:
            start = payload[:80].decode("utf-8", "replace").replace("\n", " ")
            raise RemoteRewardError(f"remote reward {self.url}: the answer is not JSON ({start!r})") from None
        scores = answer.get("scores") if isinstance(answer, dict) else answer
        if not isinstance(scores, list):
            raise RemoteRewardError(
                f'remote reward {self.url}: expected {{"scores": [...]}} or a list, got {str(answer)[:80]}'
            )
        if len(scores) != expected:
            raise RemoteRewardError(f"remote reward {self.url}: {len(scores)} scores for {expected} completions")
        for index, score in enumerate(scores):
            is_number = isinstance(score, (int, float)) and not isinstance(score, bool)
            if score is not None and not (is_number and math.isfinite(score)):
                raise RemoteRewardError(
                    f"remote reward {self.url}: score {index} is {score!r}, not a finite number or null"
                )
        return [None if score is None else float(score) for score in scores]
