"""Step shares, eval hold-out and weights: disjoint, complete, seeded."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_trl.data import DataArguments, load_step_datasets, parse_data_split
from rlhf_trl.data.splits import apply_weight, derived_seed, eval_holdout, step_share_indices


@settings(max_examples=200, deadline=None, database=None)
@given(
    count=st.integers(0, 500),
    shares=st.tuples(*[st.integers(0, 10)] * 3).filter(lambda values: sum(values) > 0),
    seed=st.integers(0, 2**32),
)
def test_step_shares_are_disjoint_and_complete(count, shares, seed):
    total = sum(shares)
    parts = step_share_indices(count, tuple(share / total for share in shares), seed)
    flat = [index for part in parts for index in part]
    assert sorted(flat) == list(range(count))  # every record in exactly one step
    for part, share in zip(parts, shares):
        assert abs(len(part) - count * share / total) <= 1
        assert part == sorted(part)
    assert parts == step_share_indices(count, tuple(share / total for share in shares), seed)


def test_data_split_parsing():
    assert parse_data_split("2,4,4") == pytest.approx((0.2, 0.4, 0.4))
    assert parse_data_split("10,0,0") == (1.0, 0.0, 0.0)
    for bad in ("1,1", "a,b,c", "0,0,0", "-1,1,1", "1,1,inf"):
        with pytest.raises(ValueError):
            parse_data_split(bad)


def test_eval_holdout_and_weights():
    assert eval_holdout(100, 0.05, 1) == eval_holdout(100, 0.05, 1) and len(eval_holdout(100, 0.05, 1)) == 5
    assert len(eval_holdout(10, 0.01, 1)) == 1 and eval_holdout(1, 0.5, 1) == set() and eval_holdout(9, 0, 1) == set()
    assert len(eval_holdout(3, 0.99, 1)) == 2  # never everything
    records = list(range(10))
    assert apply_weight(records, 1.0, 0) == records
    assert len(apply_weight(records, 2.5, 0)) == 25 and len(set(apply_weight(records, 0.3, 0))) == 3
    assert derived_seed(1, "a") == derived_seed(1, "a") != derived_seed(1, "b")


def test_no_record_in_two_steps_including_eval(tmp_path):
    records = [
        {"prompt": f"Human: question {index} Assistant:", "chosen": " y", "rejected": " n"} for index in range(500)
    ]
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records[:450]), "utf-8")
    (folder / "test.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records[450:]), "utf-8")
    seen = {}
    for step in (1, 2, 3):
        loaded = load_step_datasets(DataArguments(datasets=[str(folder)], shared_by_steps="1,2,3"), step)
        prompts = set(loaded.train["prompt"]) | set(loaded.eval["prompt"])
        for other, other_prompts in seen.items():
            assert not prompts & other_prompts, f"steps {other} and {step} share records"
        seen[step] = prompts
        assert not set(loaded.train["prompt"]) & set(loaded.eval["prompt"])
    assert set().union(*seen.values()) == {record["prompt"] for record in records}
    assert [len(seen[step]) for step in (1, 2, 3)] == [100, 200, 200]


def test_two_datasets_each_split(tmp_path):
    paths = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.jsonl"
        path.write_text(
            "".join(
                json.dumps({"prompt": f"Human: {name}{index} Assistant:", "chosen": " y", "rejected": " n"}) + "\n"
                for index in range(50)
            ),
            "utf-8",
        )
        paths.append(str(path))
    loaded = load_step_datasets(DataArguments(datasets=paths, eval_split_ratio=0, shared_by_steps="1,2,3"), 1)
    prompts = loaded.train["prompt"]
    assert sum(prompt.startswith("Human: a") for prompt in prompts) == 10
    assert sum(prompt.startswith("Human: b") for prompt in prompts) == 10
