"""A local stand-in for the Hugging Face Hub's dataset endpoints (127.0.0.1 only), for tests that load a dataset
by its Hub id through ``datasets.load_dataset``.

``DatasetHub({"org/name": folder})`` serves each folder as a dataset repository: data files plus a dataset card
``README.md`` whose YAML ``configs`` section names the files of each split. Point ``HF_ENDPOINT`` at
``hub.endpoint`` (and lift the test session's offline switches, see ``online_hub``) while it runs.
"""

from __future__ import annotations

import hashlib
import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from local_server import LocalServer

REVISION = "c0ffee" * 6 + "c0fe"  # one fixed 40-hex commit: every revision name resolves to it


class DatasetHub(LocalServer):
    """Serves ``/api/datasets/<id>/revision|tree|paths-info/<rev>`` and ``/datasets/<id>/resolve/<rev>/<file>``.

    ``requests`` records (method, path) of every call, so a test can tell that a later load made none.
    """

    def __init__(self, repos: dict[str, Path]):
        self.repos = {repo_id: Path(folder) for repo_id, folder in repos.items()}
        self.requests: list[tuple[str, str]] = []
        super().__init__(self._handler_class())

    def _files(self, repo_id: str) -> list[str]:
        folder = self.repos[repo_id]
        return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())

    def _entry(self, repo_id: str, name: str) -> dict:
        path = self.repos[repo_id] / name
        if path.is_dir():
            return {"type": "directory", "path": name, "oid": hashlib.sha1(name.encode()).hexdigest()}
        data = path.read_bytes()
        return {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}

    def _split_repo_path(self, parts: list[str]) -> tuple[str | None, list[str]]:
        """(repo id, the rest) for a path whose first two parts may be a served id."""
        repo_id = "/".join(parts[:2])
        return (repo_id, parts[2:]) if repo_id in self.repos else (None, parts)

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, dict | bytes, dict]:
        self.requests.append((method, path))
        parts = [unquote(part) for part in path.strip("/").split("/")]
        if parts[:2] == ["api", "datasets"]:
            repo_id, rest = self._split_repo_path(parts[2:])
            if repo_id is None or not rest:
                return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
            if rest[0] == "revision":
                siblings = [{"rfilename": name} for name in self._files(repo_id)]
                info = {"id": repo_id, "sha": REVISION, "siblings": siblings, "private": False, "gated": False}
                return 200, info, {}
            if rest[0] == "tree":
                prefix = "/".join(rest[2:])
                folder = self.repos[repo_id] / prefix
                if not folder.is_dir():
                    return 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}
                names = [str(item.relative_to(self.repos[repo_id])) for item in sorted(folder.iterdir())]
                return 200, [self._entry(repo_id, name) for name in names], {}
            if rest[0] == "paths-info":
                asked = _form_paths(body)
                found = [name for name in asked if (self.repos[repo_id] / name).exists()]
                return 200, [self._entry(repo_id, name) for name in found], {}
        if parts[:1] == ["datasets"]:
            repo_id, rest = self._split_repo_path(parts[1:])
            if repo_id is not None and len(rest) >= 3 and rest[0] == "resolve":
                file = self.repos[repo_id] / "/".join(rest[2:])
                if file.is_file():
                    data = file.read_bytes()
                    headers = {
                        "X-Repo-Commit": REVISION,
                        "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                        "Content-Type": "application/octet-stream",
                    }
                    return 200, data, headers
                return 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}
        return 404, {"error": f"no {method} {path} here"}, {}

    def _handler_class(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, payload, headers = hub.answer(self.command, urlparse(self.path).path, body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                headers.setdefault("Content-Type", "application/json")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_HEAD = _serve

            def log_message(self, *_):  # keep the test output clean
                pass

        return Handler


def _form_paths(body: bytes) -> list[str]:
    """The ``paths`` of a paths-info request (form-encoded or JSON)."""
    from urllib.parse import parse_qs

    text = body.decode()
    if text.startswith("{"):
        return list(json.loads(text).get("paths", []))
    return parse_qs(text).get("paths", [])


def write_dataset_repo(folder: Path, splits: dict[str, list[dict]], config: str = "default") -> Path:
    """A Hub-layout dataset repository: ``data/<split>.jsonl`` per split and a card whose ``configs`` names them."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    card_files = []
    for split, records in splits.items():
        (folder / "data" / f"{split}.jsonl").write_text(
            "".join(json.dumps(record) + "\n" for record in records), encoding="utf-8"
        )
        card_files.append(f"  - split: {split}\n    path: data/{split}.jsonl")
    card = f"---\nconfigs:\n- config_name: {config}\n  data_files:\n" + "\n".join(card_files) + "\n---\n# test data\n"
    (folder / "README.md").write_text(card, encoding="utf-8")
    return folder


@pytest.fixture
def online_hub(monkeypatch, tmp_path):
    """Lift the session's offline switches (env and the module constants read at import) and give the datasets
    cache a private folder; returns a function that serves repos and points ``HF_ENDPOINT`` at them."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_home" / "datasets"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_home" / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)

    def serve(repos: dict[str, Path]) -> DatasetHub:
        hub = DatasetHub(repos)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(
            huggingface_hub.constants,
            "HUGGINGFACE_CO_URL_TEMPLATE",
            hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        )
        monkeypatch.setattr(datasets.config, "HF_ENDPOINT", hub.endpoint)
        return hub

    def go_offline() -> None:
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    serve.go_offline = go_offline
    return serve
