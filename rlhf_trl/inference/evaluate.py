"""Evaluate each step's checkpoint: ``rlhf-trl eval sft | reward | ppo``.

- ``sft``: answers of the base model and the fine-tuned model to the same prompts, side by side.
- ``reward``: accuracy of a reward model on held-out preference pairs and the distributions of its scores.
- ``ppo``: reward-model score, KL to the reference (SFT) model, answer length, win rate against the reference as
  judged by the reward model, and the gold score when the prompts come from a task that has one.

Input files are ``.jsonl`` (one JSON object per line) or ``.json`` (a list of objects) with a ``"prompt"`` field,
plus ``"chosen"`` and ``"rejected"`` for reward pairs, in TRL's text or conversational form (a prompt as a list of
``{"role", "content"}`` messages, chosen/rejected as assistant messages). Prompts are rendered as ``rlhf-trl chat``
renders them: through the model's chat template when it has one (a plain prompt becomes a user message), and
reward models read prompt and answer as they were trained (see ``rlhf_trl.reward.sources.RewardModelScorer``). Problems
with the input end the command with one line that names the file, the record and the field.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

import torch

from rlhf_trl.generation import GenerationSettings, as_chat_prompt, as_completions, is_conversation
from rlhf_trl.inference.chat import ChatSession
from rlhf_trl.reward.sources import RewardModelScorer, load_reward_function

logger = logging.getLogger(__name__)

# Short names of gold scorers (reward functions measuring the true quality of an answer); any other
# 'module:function' with the reward-function signature works too.
GOLD_SCORERS = {"tiny": "rlhf_trl.tiny.task:gold_scores"}
GOLD_HELP = (
    "also report the gold score: a short name (" + ", ".join(sorted(GOLD_SCORERS)) + ") or any reward function "
    "'module:function' measuring the true quality of an answer"
)


class EvalInputError(ValueError):
    """An input file, record or model folder that evaluation cannot use; the message is one line."""


def _check_messages(value, where: str) -> None:
    """A conversation field: a non-empty list of {"role": str, "content": str} messages."""
    if not value:
        raise EvalInputError(f"{where}: an empty list of messages")
    for position, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise EvalInputError(f"{where}: message {position} must be an object with a 'role' string")
        if not isinstance(message.get("content"), str):
            raise EvalInputError(f"{where}: message {position} must have a 'content' string")


def read_records(path: str | Path, required_fields: tuple[str, ...]) -> list[dict]:
    """Records of a ``.jsonl`` or ``.json`` file; each must hold every field of ``required_fields`` as a string or
    as a list of messages (TRL's conversational form), all fields of a record in the same form."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise EvalInputError(f"{path}: line {line_number}: not valid JSON ({error.msg})") from error
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise EvalInputError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from error
        if not isinstance(records, list):
            raise EvalInputError(f"{path}: a .json file must hold a list of records, found {type(records).__name__}")
    if not records:
        raise EvalInputError(f"{path}: no records")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise EvalInputError(f"{path}: record {index}: expected a JSON object, found {type(record).__name__}")
        for field in required_fields:
            if field not in record:
                raise EvalInputError(f"{path}: record {index}: missing field {field!r}")
            value = record[field]
            if isinstance(value, list):
                _check_messages(value, f"{path}: record {index}: field {field!r}")
            elif not isinstance(value, str):
                kind = type(value).__name__
                raise EvalInputError(
                    f"{path}: record {index}: field {field!r} must be a string or a list of messages, found {kind}"
                )
        forms = {isinstance(record[field], list) for field in required_fields}
        if len(forms) > 1:
            raise EvalInputError(
                f"{path}: record {index}: fields {', '.join(required_fields)} mix text and message lists"
            )
    return records


def load_reward_model(path: str | Path, trust_remote_code: bool = False):
    """Load ``(model, tokenizer)`` of a reward model folder (full model or LoRA adapter with its score head).

    Fails when the checkpoint lacks weights the model needs: transformers would silently initialise a fresh
    score head, and every score would be noise.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    if (path / "adapter_config.json").exists():
        from peft import AutoPeftModelForSequenceClassification

        model = AutoPeftModelForSequenceClassification.from_pretrained(
            path, num_labels=1, trust_remote_code=trust_remote_code
        )
        base_name = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        tokenizer_source = path if (path / "tokenizer_config.json").exists() else base_name
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=trust_remote_code)
    else:
        if not (path / "config.json").exists():
            raise EvalInputError(f"{path}: no reward model here (no config.json or adapter_config.json)")
        model, loading_info = AutoModelForSequenceClassification.from_pretrained(
            path, output_loading_info=True, trust_remote_code=trust_remote_code
        )
        if loading_info["missing_keys"]:
            missing = ", ".join(sorted(loading_info["missing_keys"]))
            raise EvalInputError(f"{path}: not a trained reward model, weights missing from the checkpoint: {missing}")
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if model.config.num_labels != 1:
        raise EvalInputError(f"{path}: a reward model has one output, this one has {model.config.num_labels}")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def describe(values: list[float]) -> dict:
    """Mean, standard deviation, minimum, quartiles and maximum of a list of numbers."""
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else ordered * 3
    return {
        "mean": statistics.fmean(ordered),
        "std": statistics.pstdev(ordered),
        "min": ordered[0],
        "q25": quartiles[0],
        "median": quartiles[1],
        "q75": quartiles[2],
        "max": ordered[-1],
    }


def score_pairs(
    model_dir: str | Path, records: list[dict], batch_size: int = 16, trust_remote_code: bool = False
) -> dict:
    """Score preference pairs ``{"prompt", "chosen", "rejected"}`` with a reward model.

    Returns ``{"accuracy", "count", "margin_mean", "chosen_stats", "rejected_stats", "chosen": [scores],
    "rejected": [scores]}``; accuracy counts a pair as right only when chosen scores strictly higher.
    """
    scorer = RewardModelScorer(*load_reward_model(model_dir, trust_remote_code), batch_size=batch_size)
    prompts = [record["prompt"] for record in records]
    chosen = scorer.score(prompts, [record["chosen"] for record in records]).tolist()
    rejected = scorer.score(prompts, [record["rejected"] for record in records]).tolist()
    margins = [good - bad for good, bad in zip(chosen, rejected)]
    return {
        "model": str(model_dir),
        "count": len(records),
        "accuracy": sum(margin > 0 for margin in margins) / len(margins),
        "margin_mean": statistics.fmean(margins),
        "chosen_stats": describe(chosen),
        "rejected_stats": describe(rejected),
        "chosen": chosen,
        "rejected": rejected,
    }


def chat_prompts(session: ChatSession, prompts: list) -> list:
    """Prompts as the model is asked them: plain ones become a user message when it has a chat template."""
    return [as_chat_prompt(session.tokenizer, prompt) for prompt in prompts]


def generate_answers(
    model_dir: str | Path, prompts: list, max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0
) -> list[str]:
    """Answers of a causal LM checkpoint to prompts (greedy unless ``do_sample``), rendered and cut as in chat."""
    settings = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature)
    session = ChatSession.from_pretrained(model_dir, settings)
    return session.complete(chat_prompts(session, prompts))


def gold_scorer(name: str | None):
    """The gold scorer named ``name`` (a short name of GOLD_SCORERS or 'module:function'), or None. It has the
    reward-function signature ``f(prompts, completions, **columns) -> list[float]``."""
    if name is None:
        return None
    try:
        return load_reward_function(GOLD_SCORERS.get(name, name))
    except ValueError as error:
        raise EvalInputError(f"gold scorer: {error} (short names: {', '.join(sorted(GOLD_SCORERS))})") from error


def gold_scores_of(scorer, prompts: list, answers: list[str]) -> list[float]:
    """Gold scores of answers, given to the scorer in TRL's forms (message lists for conversational prompts)."""
    try:
        scores = scorer(prompts=list(prompts), completions=as_completions(prompts, answers))
    except ValueError as error:
        raise EvalInputError(f"gold score: {error}") from error
    if len(scores) != len(prompts):
        raise EvalInputError(f"gold score: {len(scores)} scores returned for {len(prompts)} answers")
    return [float(score) for score in scores]


def compare_sft(
    base_dir,
    model_dir,
    prompts: list,
    max_new_tokens: int = 64,
    gold: str | None = None,
    trust_remote_code: bool = False,
) -> dict:
    """Greedy answers of the base and the fine-tuned model; ``{"records": [...], "summary": {...}}``."""
    scorer = gold_scorer(gold)  # an unknown name fails before any model is loaded
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    base = ChatSession.from_pretrained(base_dir, settings, trust_remote_code)
    model = ChatSession.from_pretrained(model_dir, settings, trust_remote_code)
    base_prompts, model_prompts = chat_prompts(base, prompts), chat_prompts(model, prompts)
    base_answers, model_answers = base.complete(base_prompts), model.complete(model_prompts)
    records = [
        {"prompt": prompt, "base": base, "model": model}
        for prompt, base, model in zip(prompts, base_answers, model_answers)
    ]
    summary = {"base": str(base_dir), "model": str(model_dir), "count": len(prompts)}
    if scorer is not None:
        for name, asked, answers in (("base", base_prompts, base_answers), ("model", model_prompts, model_answers)):
            scores = gold_scores_of(scorer, asked, answers)
            for record, score in zip(records, scores):
                record[f"{name}_gold_score"] = score
            summary[f"{name}_gold_score"] = statistics.fmean(scores)
    return {"records": records, "summary": summary}


@torch.no_grad()
def completion_log_probs(model, batch, temperature: float) -> torch.Tensor:
    """Log-probabilities [batch, completion_len] of the completion tokens of a ``GeneratedBatch`` under ``model``;
    logits are divided by the sampling temperature, as the sampler saw them."""
    input_ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)  # [B, P + C]
    attention_mask = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)  # [B, P + C]
    # Left padding: positions count real tokens only, so a padded prompt sees the same positions as an unpadded one.
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    prompt_length = batch.prompt_ids.shape[1]
    completion_logits = logits[:, prompt_length - 1 : -1].float() / temperature  # [B, C, vocab]: predicts token t
    log_probs = torch.log_softmax(completion_logits, dim=-1)
    return log_probs.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)  # [B, C]


def sample_with_kl(actor: ChatSession, reference: ChatSession, prompts: list) -> dict[str, list]:
    """Answers of the actor with, per answer, the k1 KL estimate to the reference and the length in tokens.

    KL of one answer: the sum over its tokens (up to and including the end-of-text token) of
    log p_actor - log p_reference, both at the sampling temperature. Unbiased only for sampled answers.
    """
    settings = actor.settings
    temperature = settings.temperature if settings.do_sample else 1.0
    answers, kls, lengths = [], [], []
    for start in range(0, len(prompts), settings.batch_size):
        batch = actor.generate(prompts[start : start + settings.batch_size])
        actor_log_probs = completion_log_probs(actor.model, batch, temperature)  # [B, C]
        reference_log_probs = completion_log_probs(reference.model, batch, temperature)  # [B, C]
        per_token = (actor_log_probs - reference_log_probs) * batch.completion_mask  # [B, C]
        kls.extend(per_token.sum(dim=1).tolist())
        lengths.extend(batch.completion_mask.sum(dim=1).tolist())
        answers.extend(batch.texts)
    return {"answers": answers, "kls": kls, "lengths": lengths}


def win_rate(scores: list[float], other_scores: list[float]) -> float:
    """Share of pairs where ``scores`` is higher; ties count one half."""
    wins = [1.0 if mine > theirs else 0.5 if mine == theirs else 0.0 for mine, theirs in zip(scores, other_scores)]
    return statistics.fmean(wins)


def evaluate_ppo(
    actor_dir,
    reference_dir,
    reward_dir,
    prompts: list,
    max_new_tokens: int = 64,
    do_sample: bool = True,
    temperature: float = 1.0,
    gold: str | None = None,
    seed: int = 0,
    batch_size: int = 16,
    trust_remote_code: bool = False,
) -> dict:
    """Compare the PPO actor with its reference (SFT) model on the same prompts.

    Returns ``{"summary": {reward_mean, reference_reward_mean, kl_mean, response_length_mean, win_rate,
    [gold_score_mean, reference_gold_score_mean], ...}, "records": [one per prompt]}``. The win rate is judged by
    the reward model: the share of prompts where it scores the actor's answer above the reference's.
    """
    scorer = gold_scorer(gold)  # an unknown name fails before any model is loaded
    torch.manual_seed(seed)
    settings = GenerationSettings(
        max_new_tokens=max_new_tokens, temperature=temperature, do_sample=do_sample, batch_size=batch_size
    )
    actor = ChatSession.from_pretrained(actor_dir, settings, trust_remote_code)
    reference = ChatSession.from_pretrained(reference_dir, settings, trust_remote_code)
    if actor.tokenizer.get_vocab() != reference.tokenizer.get_vocab():
        raise EvalInputError(f"{actor_dir} and {reference_dir} use different tokenizers: the KL cannot be measured")
    asked = chat_prompts(actor, prompts)
    sampled = sample_with_kl(actor, reference, asked)
    actor_answers = sampled["answers"]
    reference_answers = reference.complete(asked)
    # The reward model reads each conversation through its own chat template, answers exactly as generated.
    reward = RewardModelScorer(*load_reward_model(reward_dir, trust_remote_code), batch_size=batch_size)
    actor_scores = reward.score(asked, as_completions(asked, actor_answers)).tolist()
    reference_scores = reward.score(asked, as_completions(asked, reference_answers)).tolist()
    summary = {
        "actor": str(actor_dir),
        "reference": str(reference_dir),
        "reward_model": str(reward_dir),
        "count": len(prompts),
        "do_sample": do_sample,
        "temperature": temperature,
        "reward_mean": statistics.fmean(actor_scores),
        "reference_reward_mean": statistics.fmean(reference_scores),
        "kl_mean": statistics.fmean(sampled["kls"]),
        "response_length_mean": statistics.fmean(sampled["lengths"]),
        "win_rate": win_rate(actor_scores, reference_scores),
    }
    columns = {
        "prompt": prompts,
        "actor": actor_answers,
        "reference": reference_answers,
        "actor_score": actor_scores,
        "reference_score": reference_scores,
        "kl": sampled["kls"],
        "length": sampled["lengths"],
    }
    if scorer is not None:
        columns["actor_gold_score"] = gold_scores_of(scorer, asked, actor_answers)
        columns["reference_gold_score"] = gold_scores_of(scorer, asked, reference_answers)
        summary["gold_score_mean"] = statistics.fmean(columns["actor_gold_score"])
        summary["reference_gold_score_mean"] = statistics.fmean(columns["reference_gold_score"])
    records = [{name: values[index] for name, values in columns.items()} for index in range(len(prompts))]
    return {"summary": summary, "records": records}


def _print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=True)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def _number(value: float) -> str:
    return f"{value:.4f}"


def _write_json(path: str | Path, content) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def _shown(prompt) -> str:
    """A prompt for the tables: text as it is, a conversation as its turns."""
    if is_conversation(prompt):
        return "\n".join(f"{message['role']}: {message['content']}" for message in prompt)
    return prompt


def _prompts_from(arguments) -> list:
    records = read_records(arguments.prompts, ("prompt",))
    return [record["prompt"] for record in records[: arguments.max_records]]


def run_sft(arguments) -> None:
    result = compare_sft(
        arguments.base,
        arguments.model,
        _prompts_from(arguments),
        arguments.max_new_tokens,
        arguments.gold,
        arguments.trust_remote_code,
    )
    columns = ["prompt", f"base: {arguments.base}", f"model: {arguments.model}"]
    rows = [[_shown(record["prompt"]), record["base"], record["model"]] for record in result["records"]]
    if arguments.gold:
        columns += ["gold base", "gold model"]
        for row, record in zip(rows, result["records"]):
            row += [_number(record["base_gold_score"]), _number(record["model_gold_score"])]
    _print_table("SFT: base vs fine-tuned answers", columns, rows)
    if arguments.gold:
        print(
            f"mean gold score: base {result['summary']['base_gold_score']:.4f}, "
            f"model {result['summary']['model_gold_score']:.4f}"
        )
    if arguments.output:
        Path(arguments.output).parent.mkdir(parents=True, exist_ok=True)
        with Path(arguments.output).open("w", encoding="utf-8") as handle:
            for record in result["records"]:
                handle.write(json.dumps(record) + "\n")


def run_reward(arguments) -> None:
    records = read_records(arguments.data, ("prompt", "chosen", "rejected"))[: arguments.max_records]
    result = score_pairs(arguments.model, records, arguments.batch_size, arguments.trust_remote_code)
    statistics_rows = [
        [name, *(_number(result[f"{side}_stats"][name]) for side in ("chosen", "rejected"))]
        for name in ("mean", "std", "min", "q25", "median", "q75", "max")
    ]
    _print_table("Reward-model scores", ["score", "chosen", "rejected"], statistics_rows)
    print(
        f"{arguments.model}: {result['count']} pairs, accuracy {result['accuracy']:.4f}, "
        f"mean margin (chosen - rejected) {result['margin_mean']:.4f}"
    )
    if arguments.output:
        _write_json(arguments.output, result)
    if arguments.scores_file:
        _write_json(arguments.scores_file, {"chosen": result["chosen"], "rejected": result["rejected"]})


def run_ppo(arguments) -> None:
    result = evaluate_ppo(
        arguments.model,
        arguments.reference,
        arguments.reward,
        _prompts_from(arguments),
        max_new_tokens=arguments.max_new_tokens,
        do_sample=arguments.do_sample,
        temperature=arguments.temperature,
        gold=arguments.gold,
        seed=arguments.seed,
        batch_size=arguments.batch_size,
        trust_remote_code=arguments.trust_remote_code,
    )
    rows = [
        [name, _number(value) if isinstance(value, float) else str(value)] for name, value in result["summary"].items()
    ]
    _print_table("PPO actor vs reference", ["metric", "value"], rows)
    if arguments.output:
        _write_json(arguments.output, result)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf-trl eval", description="Evaluate the checkpoint of one step.")
    commands = parser.add_subparsers(dest="command", required=True)

    def add_common(command, input_flag: str, input_help: str) -> None:
        command.add_argument(input_flag, required=True, help=input_help)
        command.add_argument("--max-records", type=int, default=None, help="use only the first N records")
        command.add_argument("--batch-size", type=int, default=16, help="texts per forward pass")
        command.add_argument("--output", default=None, help="write the results to this file")
        command.add_argument(
            "--trust-remote-code", action="store_true", help="allow models that ship their own Python code"
        )

    sft = commands.add_parser("sft", help="answers of the base and the fine-tuned model side by side")
    sft.add_argument("--base", required=True, help="base model folder")
    sft.add_argument("--model", required=True, help="fine-tuned (SFT) model folder")
    add_common(sft, "--prompts", "jsonl/json file of records with a 'prompt' field")
    sft.add_argument("--max-new-tokens", type=int, default=64, help="most tokens per answer")
    sft.add_argument("--gold", default=None, help=GOLD_HELP)
    sft.set_defaults(run=run_sft)

    reward = commands.add_parser("reward", help="accuracy and score distributions on held-out preference pairs")
    reward.add_argument("--model", required=True, help="reward model folder")
    add_common(reward, "--data", "jsonl/json file of records with 'prompt', 'chosen' and 'rejected'")
    reward.add_argument(
        "--scores-file",
        default=None,
        help="write {'chosen': [...], 'rejected': [...]} here (eval_scores.json feeds the plots)",
    )
    reward.set_defaults(run=run_reward)

    ppo = commands.add_parser("ppo", help="reward, KL, length, win rate and gold score of the PPO actor")
    ppo.add_argument("--model", required=True, help="PPO actor folder")
    ppo.add_argument("--reference", required=True, help="reference (SFT) model folder")
    ppo.add_argument("--reward", required=True, help="reward model folder")
    add_common(ppo, "--prompts", "jsonl/json file of records with a 'prompt' field")
    ppo.add_argument("--max-new-tokens", type=int, default=64, help="most tokens per answer")
    ppo.add_argument(
        "--do-sample",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sample answers (the KL estimate is only unbiased for sampled answers)",
    )
    ppo.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    ppo.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    ppo.add_argument("--gold", default=None, help=GOLD_HELP)
    ppo.set_defaults(run=run_ppo)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = make_parser().parse_args(argv)
    try:
        arguments.run(arguments)
    except (ValueError, OSError) as error:  # bad input or settings (EvalInputError is a ValueError), missing files
        print(f"error: {error}", file=sys.stderr)
        return 2  # bad input, as every command reports it
    return 0


if __name__ == "__main__":
    sys.exit(main())
