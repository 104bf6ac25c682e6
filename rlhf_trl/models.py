"""Model names the project resolves itself, and tokenizer set-up every step needs."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

# The embedded tiny default: built and briefly pretrained locally on first use, then cached.
TINY_BASE = "tiny-base"


def resolve_model_name(name_or_path: str | None) -> str | None:
    """Map the project's own names to folders; every other name or path is returned unchanged."""
    if name_or_path == TINY_BASE:
        from rlhf_trl.tiny.model import build_tiny_base

        return str(build_tiny_base())
    return name_or_path


def ensure_pad_token(tokenizer) -> None:
    """PPO must tell padding from a real end of answer, so pad may not be EOS. Tokenizers without a pad token
    get a dedicated one (the model's embeddings are resized by the caller)."""
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
        logger.warning("tokenizer had no separate pad token: added '<pad>' (id %d)", tokenizer.pad_token_id)


def match_embeddings(model, tokenizer) -> None:
    """Resize the embeddings after new special tokens and record the pad id in the model config."""
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
