"""Keep secrets out of everything a run writes or uploads: command lines, run_info.json, model cards, the
``training_args.bin`` the Trainer saves. An argument is secret when its name says so (token, key, password,
secret, credential, auth); values shaped like Hugging Face tokens are hidden wherever they appear."""

from __future__ import annotations

import re
import shlex

REDACTED = "<redacted>"
_SECRET_WORDS = {"token", "key", "apikey", "password", "passwd", "secret", "credential", "credentials", "auth"}
# Named like secrets but holding tokenizer text (TRL's SFTConfig has eos_token and pad_token fields).
_NOT_SECRET = {f"{kind}_token" for kind in ("pad", "eos", "bos", "unk", "sep", "cls", "mask", "special")}
_TOKEN_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{8,}")


def is_secret_name(name: str) -> bool:
    """True for option or field names such as hub_token, --api-key, WANDB_API_KEY, db_password."""
    cleaned = name.lstrip("-").lower()
    if cleaned.replace("-", "_") in _NOT_SECRET:
        return False
    return any(word in _SECRET_WORDS for word in re.split(r"[_\-.]", cleaned))


def redact_text(text: str) -> str:
    """Hide anything shaped like a Hugging Face token inside free text."""
    return _TOKEN_VALUE.sub(REDACTED, text)


def redact_argv(argv: list[str]) -> list[str]:
    """The command line with the values of secret options hidden: ``--hub_token X`` and ``--hub_token=X``."""
    redacted, hide_next = [], False
    for part in argv:
        if hide_next:
            redacted.append(REDACTED)
            hide_next = False
            continue
        name, equals, _ = part.partition("=")
        if part.startswith("-") and is_secret_name(name):
            if equals:
                redacted.append(f"{name}={REDACTED}")
            else:
                redacted.append(part)
                hide_next = True
            continue
        redacted.append(redact_text(part))
    return redacted


def redact_command(command: str) -> str:
    """A recorded shell command line with secret option values hidden."""
    try:
        parts = shlex.split(command)
    except ValueError:  # unbalanced quotes: fall back to hiding token-shaped text
        return redact_text(command)
    return " ".join(shlex.quote(part) for part in redact_argv(parts))


def redact_mapping(values: dict) -> dict:
    """A copy of ``values`` (nested dicts too) with secret-named entries and token-shaped strings hidden."""
    cleaned = {}
    for key, value in values.items():
        if is_secret_name(str(key)) and value not in (None, ""):
            cleaned[key] = REDACTED
        elif isinstance(value, dict):
            cleaned[key] = redact_mapping(value)
        elif isinstance(value, str):
            cleaned[key] = redact_text(value)
        else:
            cleaned[key] = value
    return cleaned


def blank_secret_fields(arguments) -> dict[str, object]:
    """Set every secret-named attribute of a config object to None and return the removed values, so objects the
    Trainer pickles (``training_args.bin``) carry no credential. The caller keeps what it still needs."""
    removed = {}
    for name, value in vars(arguments).items():
        if is_secret_name(name) and isinstance(value, str) and value:
            removed[name] = value
    for name in removed:
        setattr(arguments, name, None)
    return removed
