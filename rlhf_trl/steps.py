"""The three steps of the pipeline, described once: their names, numbers, output folders, recipe files, scripts and
the metrics that tell how they went. The step scripts, ``rlhf-trl e2e``, the report and the plots all read them here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """One step of the pipeline.

    ``name`` is what run_info.json records as ``step_name`` and the ``rlhf-trl`` command that runs it; ``folder`` its
    output folder in an e2e run; ``recipe`` its file in a recipe folder (``<name>.yaml``, variants
    ``<name>-<variant>.yaml``); ``module`` its script. ``key_metrics`` are (final metric in run_info.json, label):
    the first one present sums the step up. ``gold_metrics`` are (model, final metric) of the held-out gold score the
    step measured. ``progress_metrics`` are the metrics.jsonl keys shown while it runs.
    """

    number: int
    name: str
    short_title: str
    title: str
    key_metrics: tuple[tuple[str, str], ...]
    gold_metrics: tuple[tuple[str, str], ...]
    progress_metrics: tuple[str, ...]

    @property
    def folder(self) -> str:
        return f"step{self.number}_{self.name}"

    @property
    def recipe(self) -> str:
        return f"{self.name}.yaml"

    @property
    def module(self) -> str:
        return f"rlhf_trl.scripts.{self.name}"

    @property
    def heading(self) -> str:
        """``Step 1: supervised fine-tuning (SFT)``: the report's section title."""
        return f"Step {self.number}: {self.title}"

    @property
    def label(self) -> str:
        """``step 1 (SFT)``: the title of the step's final metrics table."""
        return f"step {self.number} ({self.short_title})"


SFT = Step(
    number=1,
    name="sft",
    short_title="SFT",
    title="supervised fine-tuning (SFT)",
    key_metrics=(("eval_gold_score", "gold score"), ("eval_loss", "eval loss")),
    gold_metrics=(("base", "base_gold_score"), ("sft", "eval_gold_score")),
    progress_metrics=("loss", "eval_loss", "eval_gold_score"),
)
REWARD = Step(
    number=2,
    name="reward",
    short_title="reward model",
    title="reward model",
    key_metrics=(("eval_pair_accuracy", "pair accuracy"), ("eval_accuracy", "accuracy")),
    gold_metrics=(),
    progress_metrics=("loss", "accuracy", "eval_loss", "eval_accuracy", "eval_pair_accuracy"),
)
PPO = Step(
    number=3,
    name="ppo",
    short_title="PPO",
    title="PPO",
    key_metrics=(("eval/gold_score", "gold score"), ("eval/score", "reward score")),
    gold_metrics=(("ppo", "eval/gold_score"),),
    progress_metrics=(
        "objective/score",
        "objective/gold_score",
        "objective/kl",
        "policy/clip_fraction",
        "response/length",
    ),
)
STEPS = (SFT, REWARD, PPO)
STEP_NAMES = tuple(step.name for step in STEPS)
STEP_NUMBERS = tuple(step.number for step in STEPS)
BY_NUMBER = {step.number: step for step in STEPS}
BY_NAME = {step.name: step for step in STEPS}
