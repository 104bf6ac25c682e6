"""Gold scores: the true quality of an answer, measured by a reward function of the task (the tiny task has one).

A gold scorer has the reward-function signature ``f(prompts, completions, **columns) -> list[float]``; evaluation
reports its mean beside the reward model's score, so reward hacking (reward up, quality down) shows.
"""

from __future__ import annotations

from rlhf_trl.generation import as_completions
from rlhf_trl.inference.eval_inputs import EvalInputError
from rlhf_trl.reward.sources import load_reward_function

# Short names of gold scorers (reward functions measuring the true quality of an answer); any other
# 'module:function' with the reward-function signature works too.
GOLD_SCORERS = {"tiny": "rlhf_trl.tiny.task:gold_scores"}
GOLD_HELP = (
    "also report the gold score: a short name (" + ", ".join(sorted(GOLD_SCORERS)) + ") or any reward function "
    "'module:function' measuring the true quality of an answer"
)


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
