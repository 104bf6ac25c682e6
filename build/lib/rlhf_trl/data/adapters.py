"""DS-Chat's named datasets as adapters to our records.

Each converter reads the columns the real dataset has (as DS-Chat's ``raw_datasets.py`` reads them) and returns a
pairwise record ``{"prompt", "chosen", "rejected"}`` or an SFT record ``{"prompt", "completion"}``. Prompts of
datasets that store a bare question become ``Human: <question> Assistant:`` and answers get a leading space, so the
answer continues the prompt the way DS-Chat concatenates them.
"""

from __future__ import annotations

import re

from .errors import RecordFiltered, RecordProblem
from .records import PAIRWISE, SFT, check_text
from .registry import DatasetAdapter, register_dataset

# Citation marks like "[1]" or "[2, 3]" that WebGPT answers carry; the reward model should not learn from them.
_CITATION = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")


def human_prompt(question: str) -> str:
    return f"Human: {question.strip()} Assistant:"


def answer(text: str) -> str:
    return " " + text.strip()


def _text(row: dict, name: str) -> str:
    return check_text(row, name)


def _first(items: object, name: str, filter_reason: str) -> object:
    """First element of a list column; an empty list is a by-design gap (filtered), a non-list is a problem."""
    if not isinstance(items, list):
        raise RecordProblem(name, "unexpected schema", "expected a list")
    if not items:
        raise RecordFiltered(filter_reason)
    return items[0]


def convert_hh_style(row: dict) -> dict:
    """Dahoas/rm-static and Dahoas/full-hh-rlhf: prompt already ends with 'Assistant:'; answers follow it."""
    return {"prompt": _text(row, "prompt"), "chosen": _text(row, "chosen"), "rejected": _text(row, "rejected")}


def convert_synthetic_instruct(row: dict) -> dict:
    """Dahoas/synthetic-instruct-gptj-pairwise: a bare instruction with two answers."""
    return {
        "prompt": human_prompt(_text(row, "prompt")),
        "chosen": answer(_text(row, "chosen")),
        "rejected": answer(_text(row, "rejected")),
    }


def convert_rlhf_reward_datasets(row: dict) -> dict:
    """yitingxie/rlhf-reward-datasets: the prompt lacks the final 'Assistant:'; answers repeat it before the text."""
    prompt = _text(row, "prompt")
    if not prompt.rstrip().endswith("Assistant:"):
        prompt = prompt + "Assistant:"
    chosen = _text(row, "chosen").split("Assistant:")[-1]
    rejected = _text(row, "rejected").split("Assistant:")[-1]
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def convert_webgpt(row: dict) -> dict:
    """openai/webgpt_comparisons: two answers to one question with human scores; ties carry no preference."""
    question = row["question"]
    if not isinstance(question, dict):
        raise RecordProblem("question", "unexpected schema", "expected an object with 'full_text'")
    prompt = human_prompt(_text(question, "full_text"))
    first, second = _text(row, "answer_0"), _text(row, "answer_1")
    score_first, score_second = row["score_0"], row["score_1"]
    if not all(isinstance(score, (int, float)) for score in (score_first, score_second)):
        raise RecordProblem("score_0", "unexpected schema", "scores must be numbers")
    if score_first == score_second:
        raise RecordFiltered("tied scores")
    chosen, rejected = (first, second) if score_first > score_second else (second, first)
    return {
        "prompt": prompt,
        "chosen": answer(_CITATION.sub("", chosen)),
        "rejected": answer(_CITATION.sub("", rejected)),
    }


def convert_shp(row: dict) -> dict:
    """stanfordnlp/SHP: a Reddit post and two comments; labels == 1 means comment A was preferred."""
    label = row["labels"]
    if label not in (0, 1):
        raise RecordProblem("labels", "unexpected schema", "expected 0 or 1")
    first, second = _text(row, "human_ref_A"), _text(row, "human_ref_B")
    chosen, rejected = (first, second) if label == 1 else (second, first)
    return {"prompt": human_prompt(_text(row, "history")), "chosen": answer(chosen), "rejected": answer(rejected)}


def convert_instruction_response(row: dict) -> dict:
    """wangrui6/Zhihu-KOL: question and one answer (SFT only)."""
    return {"prompt": human_prompt(_text(row, "INSTRUCTION")), "completion": answer(_text(row, "RESPONSE"))}


def convert_miracl(row: dict) -> dict:
    """Cohere/miracl-*-queries-22-12: a query with relevant (chosen) and irrelevant (rejected) passages."""
    positive = _first(row["positive_passages"], "positive_passages", "no positive passage")
    negative = _first(row["negative_passages"], "negative_passages", "no negative passage")
    if not isinstance(positive, dict) or not isinstance(negative, dict):
        raise RecordProblem("positive_passages", "unexpected schema", "passages must be objects with 'text'")
    return {
        "prompt": human_prompt(_text(row, "query")),
        "chosen": answer(_text(positive, "text")),
        "rejected": answer(_text(negative, "text")),
    }


def convert_hc3(row: dict) -> dict:
    """Hello-SimpleAI/HC3-Chinese: a question with human and ChatGPT answers; DS-Chat learns the human one."""
    human_answer = _first(row["human_answers"], "human_answers", "no human answer")
    return {"prompt": human_prompt(_text(row, "question")), "completion": answer(_text({"a": human_answer}, "a"))}


def mkqa_converter(language: str):
    """mkqa: queries and answers keyed by language code; an answer without text (e.g. unanswerable) is filtered."""

    def convert(row: dict) -> dict:
        queries, answers = row["queries"], row["answers"]
        if not isinstance(queries, dict) or not isinstance(answers, dict):
            raise RecordProblem("queries", "unexpected schema", "expected objects keyed by language")
        first = _first(answers[language], f"answers.{language}", "no answer")
        if not isinstance(first, dict) or not first.get("text"):
            raise RecordFiltered("answer without text")
        return {
            "prompt": human_prompt(_text(queries, language)),
            "completion": answer(_text(first, "text")),
        }

    return convert


def convert_qg_jaquad(row: dict) -> dict:
    """lmqg/qg_jaquad: a question and the sentence that answers it."""
    return {"prompt": human_prompt(_text(row, "question")), "completion": answer(_text(row, "sentence"))}


def convert_qag_jaquad(row: dict) -> dict:
    """lmqg/qag_jaquad: generated questions of a paragraph; DS-Chat pairs the first question with the paragraph."""
    question = _first(row["questions"], "questions", "no question")
    return {"prompt": human_prompt(_text({"q": question}, "q")), "completion": answer(_text(row, "paragraph"))}


DS_CHAT_ADAPTERS = [
    DatasetAdapter("Dahoas/rm-static", convert_hh_style, PAIRWISE),
    DatasetAdapter("Dahoas/full-hh-rlhf", convert_hh_style, PAIRWISE),
    DatasetAdapter("Dahoas/synthetic-instruct-gptj-pairwise", convert_synthetic_instruct, PAIRWISE, eval_split=None),
    DatasetAdapter("yitingxie/rlhf-reward-datasets", convert_rlhf_reward_datasets, PAIRWISE),
    DatasetAdapter("openai/webgpt_comparisons", convert_webgpt, PAIRWISE, eval_split=None),
    DatasetAdapter("stanfordnlp/SHP", convert_shp, PAIRWISE, eval_split="validation"),
    DatasetAdapter("wangrui6/Zhihu-KOL", convert_instruction_response, SFT, eval_split=None),
    DatasetAdapter("Cohere/miracl-zh-queries-22-12", convert_miracl, PAIRWISE, eval_split="dev"),
    DatasetAdapter(
        "Hello-SimpleAI/HC3-Chinese",
        convert_hc3,
        SFT,
        hub_config="all",
        eval_split=None,
        local_file_pattern="**/all.jsonl",
    ),
    DatasetAdapter("mkqa-Chinese", mkqa_converter("zh_cn"), SFT, hub_path="apple/mkqa", eval_split=None),
    DatasetAdapter("mkqa-Japanese", mkqa_converter("ja"), SFT, hub_path="apple/mkqa", eval_split=None),
    DatasetAdapter("Cohere/miracl-ja-queries-22-12", convert_miracl, PAIRWISE, eval_split="dev"),
    DatasetAdapter("lmqg/qg_jaquad", convert_qg_jaquad, SFT, eval_split="validation"),
    DatasetAdapter("lmqg/qag_jaquad", convert_qag_jaquad, SFT, eval_split="validation"),
]

for _adapter in DS_CHAT_ADAPTERS:
    register_dataset(_adapter, replace=True)
