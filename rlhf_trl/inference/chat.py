"""Multi-turn chat with a trained checkpoint in the terminal: ``rlhf-trl chat --path DIR``.

Type a message and press enter; ``clear`` forgets the conversation, ``quit`` (or end of input) leaves. The
conversation is rendered with the tokenizer's chat template when it has one, otherwise as DS-Chat's transcript
``Human: <text> Assistant: <answer> Human: ...``. Only the newly generated tokens are decoded; the answer ends at
the first end-of-text token and is cut where the model starts writing the next user turn by itself.

Answers are generated, cut and decoded by :class:`rlhf_trl.generation.Generator`, as everywhere else in the project;
this module keeps the conversation.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rlhf_trl.generation import TRANSCRIPT_ASSISTANT, TRANSCRIPT_USER, GenerationSettings, Generator, Prompt
from rlhf_trl.models import load_causal_lm

logger = logging.getLogger(__name__)


class ChatSession:
    """A conversation with one model: ``reply(user_text) -> answer`` keeps the history, ``clear()`` forgets it.

    Answers come from ``generator`` (:class:`rlhf_trl.generation.Generator`), the same generation evaluation uses.
    """

    def __init__(self, model, tokenizer, settings: GenerationSettings | None = None):
        self.generator = Generator(model, tokenizer, settings)
        self.history: list[tuple[str, str]] = []  # (user text, assistant answer)
        self.uses_chat_template = bool(tokenizer.chat_template)

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
        while history and not self.generator.fits(prompt):
            history.pop(0)
            prompt = self.render(history, user_text)
        if len(history) < len(self.history):
            logger.info(
                "conversation too long for the model: dropped the %d oldest exchanges",
                len(self.history) - len(history),
            )
        answer = self.generator.complete([prompt])[0].strip()
        self.history = [*history, (user_text, answer)]
        return answer


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
