"""Reward functions named and called as TRL names and calls them: built-ins and factories, dotted paths, async
functions, None for "not applicable", TRL's keyword arguments, and a PPO run driven by a TRL built-in."""

from __future__ import annotations

import asyncio

import pytest
import torch
from ppo_helpers import build
from trl.rewards import get_repetition_penalty_reward, get_soft_overlong_punishment, think_format_reward

from rlhf_trl.reward.functions import RewardFunction, RewardFunctionError, TRLRewardKwargs, as_reward_function
from rlhf_trl.reward.sources import CombinedReward, load_reward_function
from rlhf_trl.tiny.task import gold_scores

CONVERSATION_PROMPTS = [[{"role": "user", "content": "What is 2 + 2?"}]] * 3
CONVERSATION_COMPLETIONS = [
    [{"role": "assistant", "content": "<think>\nTwo and two.\n</think>\nFour."}],
    [{"role": "assistant", "content": "<think>\nNo closing tag. Four."}],
    [{"role": "assistant", "content": "Four."}],
]


def trl_kwargs(completion_ids, step=3):
    """What TRL's GRPOTrainer passes besides prompts and completions, built the way a trainer here builds it."""
    ids = torch.tensor([row + [0] * (6 - len(row)) for row in completion_ids])
    mask = torch.tensor([[1] * len(row) + [0] * (6 - len(row)) for row in completion_ids])
    return TRLRewardKwargs().for_batch(ids, mask, global_step=step, max_steps=10)


def test_trl_builtin_by_name_gives_trls_values_on_conversations():
    function = load_reward_function("think_format_reward")
    assert function.__wrapped__ is think_format_reward and function.__name__ == "think_format_reward"
    kwargs = trl_kwargs([[5, 6, 2], [7, 2], [8]])
    scores = function(prompts=CONVERSATION_PROMPTS, completions=CONVERSATION_COMPLETIONS, **kwargs)
    assert scores == think_format_reward(CONVERSATION_COMPLETIONS) == [1.0, 0.0, 0.0]


def test_trl_factories_take_keyword_arguments_and_bare_names_get_trls_script_values():
    spec = "get_soft_overlong_punishment(max_completion_len=5, soft_punish_cache=3)"
    function = load_reward_function(spec)
    ids = [[1, 2], [1, 2, 3, 4], [1, 2, 3, 4, 5, 6]]
    expected = get_soft_overlong_punishment(max_completion_len=5, soft_punish_cache=3)(ids)
    assert function(prompts=["p"] * 3, completions=["c"] * 3, **trl_kwargs(ids)) == expected == [0.0, -2 / 3, -1.0]
    bare = load_reward_function("get_soft_overlong_punishment")
    assert (bare.__wrapped__.max_completion_len, bare.__wrapped__.soft_punish_cache) == (1280, 256)
    repetition = load_reward_function("trl.rewards.get_repetition_penalty_reward(ngram_size=2)")
    assert repetition(prompts=["p"] * 3, completions=["c"] * 3, **trl_kwargs(ids)) == get_repetition_penalty_reward(
        ngram_size=2
    )(ids)


def test_completion_ids_are_each_answers_real_tokens_as_trl_gives_them():
    completion_ids = torch.tensor([[4, 5, 2, 0], [6, 0, 0, 0], [7, 8, 9, 3]])
    completion_mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])  # EOS (2) kept, padding not
    kwargs = TRLRewardKwargs().for_batch(completion_ids, completion_mask, global_step=4, max_steps=9)
    expected = [[int(i) for i, m in zip(row, mask) if m] for row, mask in zip(completion_ids, completion_mask)]
    assert kwargs["completion_ids"] == expected == [[4, 5, 2], [6], [7, 8, 9, 3]]
    assert (kwargs["trainer_state"].global_step, kwargs["trainer_state"].max_steps) == (4, 9)


def test_dotted_paths_and_modules_in_the_working_directory(tmp_path, monkeypatch):
    dotted = load_reward_function("rlhf_trl.tiny.task.gold_scores")
    assert dotted.__wrapped__ is gold_scores
    (tmp_path / "my_rewards.py").write_text(
        "def brevity(prompts, completions, **kwargs):\n    return [-len(c) for c in completions]\n"
    )
    monkeypatch.chdir(tmp_path)
    for spec in ("my_rewards.brevity", "my_rewards:brevity"):
        assert load_reward_function(spec)(prompts=["a", "b"], completions=["xy", "xyz"]) == [-2, -3]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_name", "must look like 'package.module:function', 'package.module.function'"),
        ("rlhf_trl.no_such_module.f", "cannot import module 'rlhf_trl.no_such_module'"),
        ("rlhf_trl.tiny.task.no_such_function", "has no callable 'no_such_function'"),
        ("get_cosine_scaled_reward", "missing 1 required positional argument: 'max_len'"),
        ("get_soft_overlong_punishment(64, 16)", "give the factory's arguments by keyword"),
        ("get_soft_overlong_punishment(max_completion_len=len('x'))", "max_completion_len= is not a literal"),
    ],
)
def test_bad_specs_are_one_line_naming_them(spec, message):
    with pytest.raises(RewardFunctionError) as caught:
        load_reward_function(spec)
    assert message in str(caught.value) and repr(spec) in str(caught.value) and "\n" not in str(caught.value)


async def length_after_a_wait(prompts, completions, **kwargs):
    await asyncio.sleep(0.01)
    return [float(len(completion)) for completion in completions]


class AsyncScorer:
    async def __call__(self, prompts, completions, **kwargs):
        return [1.0 for _ in completions]


def test_async_functions_run_to_completion_even_inside_a_running_loop():
    function = as_reward_function(length_after_a_wait)
    assert function(prompts=["a", "b"], completions=["xy", "x"]) == [2.0, 1.0]

    async def from_a_notebook_cell():
        return function(prompts=["a"], completions=["xyz"])

    assert asyncio.run(from_a_notebook_cell()) == [3.0]
    assert as_reward_function(AsyncScorer())(prompts=["a"], completions=["b"]) == [1.0]


def test_none_means_not_applicable_and_contributes_nothing():
    def only_long(prompts, completions, **kwargs):
        return [None if len(completion) < 3 else 1.0 for completion in completions]

    function = as_reward_function(only_long)
    assert function(prompts=["a", "b"], completions=["xy", "xyz"]) == [None, 1.0]
    total, parts = CombinedReward([function, lambda prompts, completions, **kwargs: [0.5, 0.5]])(
        ["a", "b"], ["xy", "xyz"]
    )
    assert total.tolist() == [0.5, 1.5]
    assert torch.isnan(parts["only_long"][0]) and parts["only_long"][1] == 1.0


def test_a_signature_without_kwargs_fails_with_one_line_naming_the_function():
    def two_arguments(prompts, completions):
        return [0.0] * len(prompts)

    with pytest.raises(RewardFunctionError) as caught:
        as_reward_function(two_arguments)(prompts=["a"], completions=["b"], **trl_kwargs([[1]]))
    message = str(caught.value)
    assert message.startswith("reward function two_arguments: cannot be called as TRL calls reward functions")
    assert "unexpected keyword argument 'completion_ids'" in message and "\n" not in message

    overlong = load_reward_function("get_soft_overlong_punishment(max_completion_len=4, soft_punish_cache=3)")
    with pytest.raises(RewardFunctionError, match=r"missing a required argument: 'completion_ids' \(this call passes"):
        overlong(prompts=["a"], completions=["b"])  # a caller that leaves TRL's completion_ids out

    def buggy(prompts, completions, **kwargs):
        return [len(None) for _ in completions]

    with pytest.raises(TypeError, match="NoneType"):  # a bug inside the function keeps its own error
        as_reward_function(buggy)(prompts=["a"], completions=["b"])


def test_log_metric_values_are_averaged_into_metrics():
    def logs(prompts, completions, log_metric, trainer_state, **kwargs):
        log_metric("brevity/mean_chars", sum(map(len, completions)) / len(completions))
        log_metric("step_seen", trainer_state.global_step)
        return [0.0] * len(completions)

    reward_kwargs = TRLRewardKwargs()
    function = as_reward_function(logs)
    for step, completions in enumerate([["ab", "abcd"], ["abcdef", "abcdef"]]):
        function(prompts=["p", "q"], completions=completions, **reward_kwargs.for_batch(*ids_and_mask(), step))
    assert reward_kwargs.pop_metrics() == {"brevity/mean_chars": 4.5, "step_seen": 0.5}
    assert reward_kwargs.pop_metrics() == {}, "metrics are cleared once logged"


def ids_and_mask():
    return torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)


def test_ppo_raises_a_trl_builtin_reward(tmp_path, tiny_base_dir, tiny_reward_dir):
    # TRL's DAPO overlong punishment with a short budget: answers over 2 tokens lose reward, over 4 get -1.
    overlong = load_reward_function("get_soft_overlong_punishment(max_completion_len=4, soft_punish_cache=3)")

    def length_logger(prompts, completions, completion_ids, log_metric, **kwargs):
        log_metric("answer_tokens", sum(map(len, completion_ids)) / len(completion_ids))
        return [0.0] * len(completions)  # weight 0: it only logs

    trainer = build(
        tmp_path,
        tiny_base_dir,
        tiny_reward_dir,
        reward_model=False,
        reward_funcs=[overlong, as_reward_function(length_logger)],
        reward_weights=[1.0, 0.0],
        max_steps=16,
        kl_coef=0.0,
    )
    trainer.train()
    history = trainer.log_history
    scores = [record["objective/score"] for record in history]
    assert scores[0] < -0.5 and sum(scores[-2:]) / 2 > scores[0] + 0.5, scores
    # log_metric values reach the logged metrics and agree with the trainer's own length measure.
    assert [record["answer_tokens"] for record in history] == pytest.approx(
        [record["response/length"] for record in history], abs=1e-5
    )


def test_reward_function_objects_keep_trls_display_names():
    assert load_reward_function("get_repetition_penalty_reward").__name__ == "repetition_penalty_reward"
    assert RewardFunction(lambda prompts, completions, **kwargs: []).__name__ == "<lambda>"


def test_ppo_with_a_chat_model_raises_a_trl_builtin_reward(tmp_path, tiny_chat_dir, tiny_chat_reward_dir):
    from datasets import Dataset

    from rlhf_trl.tiny.task import make_records

    records = [
        {"prompt": [{"role": "user", "content": record["prompt"][len("Human: ") : -len(" Assistant:")]}]}
        for record in make_records("ppo", 32)
    ]
    overlong = load_reward_function("get_soft_overlong_punishment(max_completion_len=6, soft_punish_cache=5)")
    trainer = build(
        tmp_path,
        tiny_chat_dir,
        tiny_chat_reward_dir,
        train=Dataset.from_list(records),
        reward_model=False,
        reward_funcs=[overlong],
        max_steps=8,
        kl_coef=0.0,
        eval_steps=0,
        whiten_advantages=True,
    )
    trainer.scorer.gold = None  # the sorting task's gold scorer is not what this test is about
    trainer.train()
    scores = [record["objective/score"] for record in trainer.log_history]
    assert sum(scores[-2:]) / 2 > scores[0] + 0.3, scores
