"""Random malformed input: the data layer answers with DataValidationError or with data, never another error."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf_trl.data import DataArguments, DataValidationError, load_step_datasets

FIELDS = ["prompt", "chosen", "rejected", "completion", "messages", "responses", "scores", "role", "content", "x"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["Human: hi Assistant:", " answer", "", "Assistant:", "user", "assistant"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(FIELDS), children, max_size=4),
    ),
    max_leaves=12,
)
records = st.one_of(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6), json_values)


def _content(suffix: str, items: list, raw: bytes | None) -> bytes:
    if raw is not None:
        return raw
    if suffix == ".jsonl":
        return "".join(json.dumps(item) + "\n" for item in items).encode()
    if suffix == ".csv":
        lines = [
            "prompt,chosen,rejected",
            *(",".join(str(value) for value in item.values()) for item in items if isinstance(item, dict)),
        ]
        return "\n".join(lines).encode()
    return json.dumps(items).encode()


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(records, max_size=6),
    raw=st.one_of(st.none(), st.binary(max_size=40)),
    suffix=st.sampled_from([".json", ".jsonl", ".csv", ".parquet"]),
    step=st.sampled_from([1, 2, 3]),
    skip=st.booleans(),
    record_format=st.sampled_from(["auto", "text", "conversational"]),
    max_prompt=st.one_of(st.none(), st.integers(1, 30)),
)
def test_only_data_validation_errors(items, raw, suffix, step, skip, record_format, max_prompt):
    if suffix == ".parquet" and raw is None:
        raw = b"PAR1" + bytes(8)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes(_content(suffix, items, raw))
        args = DataArguments(
            datasets=[str(path)],
            skip_invalid_records=skip,
            record_format=record_format,
            max_prompt_length_chars=max_prompt,
            data_split="1,1,1",
        )
        try:
            loaded = load_step_datasets(args, step)
        except DataValidationError as error:
            assert "\n" not in str(error)
            return
        assert len(loaded.train) > 0
        assert loaded.summary.total_read >= len(loaded.train)


@settings(max_examples=80, deadline=None, database=None)
@given(record=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6), step=st.sampled_from([1, 2, 3]))
def test_one_random_record_among_good_ones(record, step):
    """A malformed record among valid ones is either accepted as valid or reported with its record number."""
    good = [{"prompt": f"Human: q{index} Assistant:", "chosen": " yes", "rejected": " no"} for index in range(6)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.jsonl"
        lines = [json.dumps(item) for item in [*good[:3], record, *good[3:]]]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        try:
            loaded = load_step_datasets(DataArguments(datasets=[str(path)], data_split="1,1,1"), step)
        except DataValidationError as error:
            assert error.record_number == 4 or error.record_number is None
            return
        for row in loaded.train:
            for value in row.values():
                assert not (isinstance(value, float) and math.isnan(value))


# Column names of the registered DS-Chat datasets, so random rows hit the adapters' real code paths.
ADAPTER_COLUMNS = [
    "prompt", "chosen", "rejected", "question", "full_text", "answer_0", "answer_1", "score_0", "score_1",
    "history", "human_ref_A", "human_ref_B", "labels", "INSTRUCTION", "RESPONSE", "query", "positive_passages",
    "negative_passages", "text", "human_answers", "queries", "answers", "zh_cn", "ja", "sentence", "questions",
    "paragraph",
]  # fmt: skip
adapter_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.sampled_from(ADAPTER_COLUMNS), children, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(
        ["Dahoas/rm-static", "yitingxie/rlhf-reward-datasets", "openai/webgpt_comparisons", "stanfordnlp/SHP",
         "wangrui6/Zhihu-KOL", "Cohere/miracl-zh-queries-22-12", "Hello-SimpleAI/HC3-Chinese", "mkqa-Chinese",
         "lmqg/qag_jaquad"]
    ),
    rows=st.lists(
        st.dictionaries(st.sampled_from(ADAPTER_COLUMNS), adapter_values, max_size=8), min_size=1, max_size=4
    ),
    step=st.sampled_from([1, 2, 3]),
)  # fmt: skip
def test_adapters_on_random_rows(name, rows, step):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        try:
            load_step_datasets(DataArguments(datasets=[f"{name}@{path}"], skip_invalid_records=True), step)
        except DataValidationError as error:
            assert "\n" not in str(error)
