"""Model names the project resolves itself, LoRA adapter folders, loading a checkpoint for generation, and the
tokenizer set-up every step needs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

CACHE_DIR = Path(os.environ.get("RLHF_TRL_CACHE", Path.home() / ".cache" / "rlhf_trl"))
# The embedded tiny default: built and briefly pretrained locally on first use, then cached.
TINY_BASE = "tiny-base"
# Tiny chat models of current architectures (byte-level BPE, chat template), built the same way: name -> family.
TINY_CHAT_BASES = {"tiny-llama-chat": "llama", "tiny-qwen2-chat": "qwen2"}
# The file that makes a folder a LoRA adapter (PEFT's): it names the adapter's base model.
ADAPTER_CONFIG = "adapter_config.json"


def is_lora_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a LoRA adapter (a LoRA step's output) rather than a full model."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_config(path: str | Path) -> dict:
    """The adapter configuration of the LoRA folder ``path``."""
    return json.loads((Path(path) / ADAPTER_CONFIG).read_text(encoding="utf-8"))


def adapter_base_model(path: str | Path) -> str | None:
    """Name or path of the base model the LoRA adapter in ``path`` was trained on (None when it names none)."""
    return adapter_config(path).get("base_model_name_or_path") or None


def adapter_tokenizer_source(path: str | Path) -> str | Path:
    """Where the tokenizer of the LoRA folder ``path`` is: the folder when it was saved there, else the base model."""
    return path if (Path(path) / "tokenizer_config.json").is_file() else adapter_base_model(path)


def resolve_model_name(name_or_path: str | None) -> str | None:
    """Map the project's own names to folders, and LoRA adapter folders (a LoRA step's output) to a full model
    with the adapter merged in, so the next step can load it, quantize it and add its own adapters. Every other
    name or path is returned unchanged."""
    if name_or_path == TINY_BASE:
        from rlhf_trl.tiny.model import build_tiny_base

        return str(build_tiny_base())
    if name_or_path in TINY_CHAT_BASES:
        from rlhf_trl.tiny.chat_model import build_tiny_chat_base

        return str(build_tiny_chat_base(family=TINY_CHAT_BASES[name_or_path]))
    if name_or_path and is_lora_folder(name_or_path):
        return str(merged_adapter(Path(name_or_path)))
    return name_or_path


def merged_adapter(adapter_dir: Path) -> Path:
    """The adapter merged into its base, cached by the adapter's content; the adapter folder is never modified."""
    from rlhf_trl.reporting.hub import merge_adapter

    digest = hashlib.sha256()
    for path in sorted(adapter_dir.glob("adapter_*")):
        digest.update(path.read_bytes())
    target = CACHE_DIR / "merged" / digest.hexdigest()[:16]
    if (target / "config.json").exists():
        return target
    staging = Path(tempfile.mkdtemp(prefix=".merge-", dir=ensure_dir(target.parent)))
    with whole_weights_on_load():
        merge_adapter(adapter_dir, staging)
    os.replace(staging, target)
    logger.info("merged LoRA adapter %s into %s", adapter_dir, target)
    return target


def load_causal_lm(path: str | Path, trust_remote_code: bool = False):
    """Load ``(model, tokenizer)`` from a checkpoint folder: a full model or a LoRA adapter folder.

    An adapter folder (see :func:`is_lora_folder`) is loaded on top of its base model; its tokenizer comes from the
    folder when saved there, else from the base model. The model is returned in eval mode on CPU/GPU as saved.
    ``trust_remote_code`` allows models and tokenizers that ship their own Python code.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(resolve_model_name(str(path)) if str(path) == TINY_BASE else path)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist")
    if is_lora_folder(path):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code)
        tokenizer_source = adapter_tokenizer_source(path)
    else:
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} holds no model: neither config.json nor {ADAPTER_CONFIG}")
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code)
        tokenizer_source = path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=trust_remote_code)
    model.eval()
    return model, tokenizer


@contextlib.contextmanager
def whole_weights_on_load():
    """Models loaded inside keep every weight, even in a process where ZeRO-3 partitions models at load time (a step
    launched with a ZeRO-3 config). Merging an adapter needs the whole base; partitioned, its weights are empty."""
    from transformers.integrations import deepspeed as hf_deepspeed

    if not hf_deepspeed.is_deepspeed_zero3_enabled():
        yield
        return
    # transformers keeps the active DeepSpeed config behind this module-level weak reference; set it back after.
    config = hf_deepspeed._hf_deepspeed_config_weak_ref()
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# Tokens that model families reserve and never produce in text; any of them can pad without new embeddings.
UNUSED_PAD_CANDIDATES = (
    "<|finetune_right_pad_id|>",  # Llama 3
    "<|reserved_special_token_0|>",  # Llama 3
    "<|endoftext|>",  # Qwen (whose chat models end turns with <|im_end|>), GPT-2 style tokenizers
    "<|pad|>",
    "<pad>",
    "[PAD]",
)


def ensure_pad_token(tokenizer, pad_token: str | None = None) -> None:
    """PPO must tell padding from a real end of answer, so pad may not be EOS.

    In order: the tokenizer's own pad token when it differs from EOS; the ``pad_token`` setting; a token the
    vocabulary already holds but never uses in text (Llama 3's ``<|finetune_right_pad_id|>``, Qwen's
    ``<|endoftext|>`` when EOS is ``<|im_end|>``); and only as a last resort a new ``<pad>`` token, whose embedding
    row :func:`match_embeddings` then adds to the model (logged).
    """
    if pad_token is not None:
        if pad_token == tokenizer.eos_token:
            raise ValueError(
                f"pad_token {pad_token!r} is the EOS token; padding must be told apart from an answer end"
            )
        _set_pad_token(tokenizer, pad_token, "the pad_token setting")
        return
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    vocabulary = tokenizer.get_vocab()
    for candidate in UNUSED_PAD_CANDIDATES:
        if candidate in vocabulary and candidate not in (tokenizer.eos_token, tokenizer.bos_token):
            _set_pad_token(tokenizer, candidate, "an unused token of the vocabulary")
            return
    _set_pad_token(tokenizer, "<pad>", "a new token (the model's embeddings grow by one row)")


def _set_pad_token(tokenizer, token: str, source: str) -> None:
    if token in tokenizer.get_vocab():
        tokenizer.pad_token = token
    else:
        tokenizer.add_special_tokens({"pad_token": token})
    logger.warning("pad token: %r (id %d), %s", token, tokenizer.pad_token_id, source)


def match_embeddings(model, tokenizer) -> None:
    """Resize the embeddings after new special tokens and record the pad id in the model config."""
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        logger.warning(
            "resizing %s embeddings from %d to %d rows for new special tokens",
            type(model).__name__,
            model.get_input_embeddings().num_embeddings,
            len(tokenizer),
        )
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def check_same_vocabulary(tokenizer, other_tokenizer, what: str) -> None:
    """A model that reads another model's token ids (the critic reads the actor's) needs the same vocabulary:
    same tokens under the same ids, not only the same size. Raises ValueError in one line otherwise."""
    vocabulary, other = tokenizer.get_vocab(), other_tokenizer.get_vocab()
    if vocabulary == other:
        return
    differing = sorted(token for token in set(vocabulary) | set(other) if vocabulary.get(token) != other.get(token))
    raise ValueError(
        f"{what} has a different vocabulary than the actor ({len(other)} vs {len(vocabulary)} tokens, "
        f"{len(differing)} differ, e.g. {differing[:3]}); it reads the actor's token ids, so it needs the actor's "
        "tokenizer (initialise it from a reward model trained on the actor's base)"
    )


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.txt",
)


def model_folder_problem(folder: str | Path, needs_tokenizer: bool = False) -> str | None:
    """What is wrong with a local model folder, as a phrase naming the file, or None. Checked before loading so a
    damaged copy fails in a second with the file's name, not deep inside from_pretrained.

    Looks at: config.json is JSON; every ``*.safetensors`` file is complete (its header's tensors end exactly at the
    end of the file, which a truncated copy cannot fake); shards named by a ``*.safetensors.index.json`` exist; and,
    when ``needs_tokenizer``, that some tokenizer file is there."""
    import json
    import struct

    folder = Path(folder)
    config = folder / "config.json"
    if config.is_file():
        try:
            json.loads(config.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            return f"{config} is not valid JSON ({error})"
    for index in sorted(folder.glob("*.safetensors.index.json")):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            return f"{index} is not a valid weights index ({type(error).__name__}: {error})"
        missing = sorted(shard for shard in shards if not (folder / shard).is_file())
        if missing:
            return f"{index} names weight files that are missing: {', '.join(missing)}"
    for weights in sorted(folder.glob("*.safetensors")):
        size = weights.stat().st_size
        with weights.open("rb") as handle:
            head = handle.read(8)
            header_length = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            if header_length is None or 8 + header_length > size:
                return f"{weights} is truncated or not a safetensors file ({size} bytes)"
            try:
                header = json.loads(handle.read(header_length))
                tensors = [entry for key, entry in header.items() if key != "__metadata__"]
                end = max((entry["data_offsets"][1] for entry in tensors), default=0)
            except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError):
                return f"{weights} has a damaged header"
        if 8 + header_length + end != size:
            return f"{weights} is truncated or damaged: {size} bytes, its header describes {8 + header_length + end}"
    if needs_tokenizer and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return f"{folder} has no tokenizer files (no {' or '.join(TOKENIZER_FILES[:2])}): save the tokenizer there"
    return None
