"""Multi-turn chat with a trained checkpoint in the terminal: ``rlhf-trl chat --path DIR``.

Type a message and press enter; ``clear`` forgets the conversation, ``quit`` (or end of input) leaves. The
conversation is rendered with the tokenizer's chat template when it has one, otherwise as DS-Chat's transcript
``Human: <text> Assistant: <answer> Human: ...``. Only the newly generated tokens are decoded; the answer ends at
the first end-of-text token and is cut where the model starts writing the next user turn by itself.

Prompts are rendered and answers decoded by :mod:`rlhf_trl.generation`, as everywhere else in the project.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from rlhf_trl.generation import (
    GeneratedBatch,
    GenerationSettings,
    Prompt,
    completion_texts,
    encode_prompts,
    end_token_ids,
    user_turn_marker,
)
from rlhf_trl.generation import completion_mask as generation_completion_mask
from rlhf_trl.models import load_causal_lm

logger = logging.getLogger(__name__)

TRANSCRIPT_USER = "Human:"
TRANSCRIPT_ASSISTANT = "Assistant:"


class ChatSession:
    """A conversation with one model: ``reply(user_text) -> answer`` keeps the history, ``clear()`` forgets it.

    ``complete(prompts)`` answers prompts (plain texts or conversations) in batches without touching the history;
    evaluation uses it so that chat and evaluation read answers the same way.
    """

    def __init__(self, model, tokenizer, settings: GenerationSettings | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings or GenerationSettings()
        self.history: list[tuple[str, str]] = []  # (user text, assistant answer)
        self.uses_chat_template = bool(tokenizer.chat_template)
        marker = user_turn_marker(tokenizer)
        self.stop_markers = [TRANSCRIPT_USER] + ([marker] if marker and marker != TRANSCRIPT_USER else [])
        # A marker made of special tokens vanishes when decoding without them, so it is also looked for in the ids.
        self.stop_token_sequences = [tokenizer.encode(marker, add_special_tokens=False)] if marker else []
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; batched generation needs one")
        self.end_token_ids = end_token_ids(model, tokenizer)
        self.max_positions = getattr(model.config, "max_position_embeddings", None)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, settings: GenerationSettings | None = None, trust_remote_code: bool = False
    ) -> ChatSession:
        model, tokenizer = load_causal_lm(path, trust_remote_code)
        return cls(model, tokenizer, settings)

    def clear(self) -> None:
        self.history = []

    def render(self, history: list[tuple[str, str]], user_text: str) -> Prompt:
        """Prompt for the next answer: the history and the new user message as a conversation when the tokenizer has
        a chat template, else as a DS-Chat transcript ending where the answer starts."""
        if self.uses_chat_template:
            messages = []
            for previous_user, previous_answer in history:
                messages.append({"role": "user", "content": previous_user})
                messages.append({"role": "assistant", "content": previous_answer})
            messages.append({"role": "user", "content": user_text})
            return messages
        turns = [f"{TRANSCRIPT_USER} {user} {TRANSCRIPT_ASSISTANT} {answer}" for user, answer in history]
        turns.append(f"{TRANSCRIPT_USER} {user_text} {TRANSCRIPT_ASSISTANT}")
        return " ".join(turns)

    def reply(self, user_text: str) -> str:
        """Answer one user message in the context of the conversation so far and remember the exchange.

        When the conversation no longer fits the model's positions, the oldest exchanges are dropped first.
        """
        history = list(self.history)
        prompt = self.render(history, user_text)
        while history and not self._fits(prompt):
            history.pop(0)
            prompt = self.render(history, user_text)
        if len(history) < len(self.history):
            logger.info(
                "conversation too long for the model: dropped the %d oldest exchanges",
                len(self.history) - len(history),
            )
        answer = self.complete([prompt])[0].strip()
        self.history = [*history, (user_text, answer)]
        return answer

    def complete(self, prompts: list[Prompt]) -> list[str]:
        """Answers (clean text, see :meth:`generate`) for prompts, generated in batches of ``settings.batch_size``."""
        answers = []
        for start in range(0, len(prompts), self.settings.batch_size):
            answers.extend(self.generate(prompts[start : start + self.settings.batch_size]).texts)
        return answers

    def _prompt_limit(self) -> int | None:
        """Most prompt tokens: the model's positions minus the room kept for the answer (at most half of them,
        so a large ``max_new_tokens`` on a small model still leaves space for the conversation)."""
        if self.max_positions is None:
            return None
        return self.max_positions - min(self.settings.max_new_tokens, self.max_positions // 2)

    def _fits(self, prompt: Prompt) -> bool:
        limit = self._prompt_limit()
        return limit is None or len(encode_prompts(self.tokenizer, [prompt])[0]) <= limit

    @torch.no_grad()
    def generate(self, prompts: list[Prompt]) -> GeneratedBatch:
        """Generate for one batch of prompts; prompts longer than the model allows keep their end.

        ``texts`` are the answers without special tokens, cut at the next user turn; the leading space a model
        writes after a plain prompt is kept (a reward model reads prompt and answer joined as they are)."""
        limit = self._prompt_limit()
        encoded = encode_prompts(self.tokenizer, prompts)
        sequences = [ids[-limit:] if limit is not None else ids for ids in encoded]
        truncated = sum(len(ids) != len(kept) for ids, kept in zip(encoded, sequences))
        if truncated:
            logger.warning("%d prompt(s) longer than %d tokens were cut from the left", truncated, limit)
        batch = self.tokenizer.pad({"input_ids": sequences}, padding=True, padding_side="left", return_tensors="pt")
        device = next(self.model.parameters()).device
        prompt_ids, prompt_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        sampling = (
            {"do_sample": True, "temperature": self.settings.temperature}
            if self.settings.do_sample
            else {"do_sample": False}
        )
        max_new_tokens = self.settings.max_new_tokens
        if self.max_positions is not None and prompt_ids.shape[1] + max_new_tokens > self.max_positions:
            max_new_tokens = self.max_positions - prompt_ids.shape[1]
            logger.info(
                "answers limited to %d new tokens by the model's %d positions", max_new_tokens, self.max_positions
            )
        output = self.model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.end_token_ids,
            **sampling,
        )
        completion_ids = output[:, prompt_ids.shape[1] :]
        completion_mask = generation_completion_mask(completion_ids, self.end_token_ids, self.tokenizer.pad_token_id)
        # Everything after the first end-of-text token is padding that generate() appended.
        completion_ids = completion_ids.masked_fill(completion_mask == 0, self.tokenizer.pad_token_id)
        texts = [
            self._clean(prompt, ids[mask.bool()])
            for prompt, ids, mask in zip(prompt_ids, completion_ids, completion_mask)
        ]
        return GeneratedBatch(prompt_ids, prompt_mask, completion_ids, completion_mask, texts)

    def _clean(self, prompt_ids: torch.LongTensor, token_ids: torch.LongTensor) -> str:
        """Decode the new tokens of one answer without special tokens and cut it at the next user turn (the text
        before the cut loses its trailing spaces)."""
        ids = token_ids.tolist()
        for sequence in self.stop_token_sequences:
            for start in range(len(ids) - len(sequence) + 1):
                if sequence and ids[start : start + len(sequence)] == sequence:
                    ids = ids[:start]
                    break
        new_tokens = torch.tensor([ids], dtype=torch.long, device=prompt_ids.device).reshape(1, -1)
        text = completion_texts(self.tokenizer, prompt_ids.unsqueeze(0), new_tokens)[0]
        cut = len(text)
        for marker in self.stop_markers:
            position = text.find(marker)
            if position != -1:
                cut = min(cut, position)
        return text[:cut].rstrip() if cut < len(text) else text


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf-trl chat",
        description="Chat with a checkpoint in the terminal. Type 'clear' to start over, 'quit' to leave.",
    )
    parser.add_argument("--path", required=True, help="checkpoint folder (full model or LoRA adapter)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="most tokens per answer")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --do-sample)")
    parser.add_argument("--do-sample", action="store_true", help="sample answers instead of greedy decoding")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow a model that ships its own Python code"
    )
    return parser


def run_conversation(session: ChatSession, read_line, write) -> None:
    """Read user messages with ``read_line()`` ('' at the end of the input) and ``write`` the answers, until
    ``quit`` or the end of the input."""
    write("Type 'clear' to start a new conversation, 'quit' to leave.\n")
    while True:
        write(f"{TRANSCRIPT_USER} ")
        line = read_line()
        if not line:
            write("\n")
            break
        text = line.strip()
        if not text:
            continue
        if text.lower() == "quit":
            break
        if text.lower() == "clear":
            session.clear()
            write("[conversation cleared]\n")
            continue
        write(f"Assistant: {session.reply(text)}\n")


def main(argv: list[str] | None = None) -> int:
    arguments = make_parser().parse_args(argv)
    try:
        settings = GenerationSettings(
            max_new_tokens=arguments.max_new_tokens, temperature=arguments.temperature, do_sample=arguments.do_sample
        )
        session = ChatSession.from_pretrained(arguments.path, settings, arguments.trust_remote_code)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2  # bad input, as every command reports it

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    run_conversation(session, sys.stdin.readline, write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
