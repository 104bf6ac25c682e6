"""The processed-data cache: reused while inputs are unchanged, invalidated by a changed file or argument."""

from __future__ import annotations

import json

import pytest

from rlhf_trl.data import DataArguments, load_step_datasets, loading


def write_pairs(path, count, tag="answer"):
    records = [
        {"prompt": f"Human: q{index} Assistant:", "chosen": f" good {tag} {index}", "rejected": " bad"}
        for index in range(count)
    ]
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def entries(cache_dir):
    return sorted(path.name for path in cache_dir.iterdir() if not path.name.startswith("."))


def test_cache_hit_skips_processing_and_keeps_summary(tmp_path, monkeypatch):
    data, cache = tmp_path / "pairs.jsonl", tmp_path / "cache"
    write_pairs(data, 40)
    with data.open("a", encoding="utf-8") as handle:
        handle.write('{"prompt": "Human: x Assistant:", "chosen": "", "rejected": " y"}\n')
    args = DataArguments(datasets=[str(data)], data_cache_dir=str(cache), skip_invalid_records=True)
    first = load_step_datasets(args, 2)
    assert len(entries(cache)) == 1

    def no_processing(*_, **__):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(loading, "_check_rows", no_processing)
    second = load_step_datasets(args, 2)
    assert list(second.train) == list(first.train) and list(second.eval) == list(first.eval)
    assert second.summary.counts_by_reason == {"empty string: chosen": 1}
    assert str(second.summary) == str(first.summary)


def test_changed_file_or_argument_invalidates(tmp_path):
    data, cache = tmp_path / "pairs.jsonl", tmp_path / "cache"
    write_pairs(data, 30, tag="old")
    args = DataArguments(datasets=[str(data)], data_cache_dir=str(cache), eval_split_ratio=0)
    before = load_step_datasets(args, 1)
    write_pairs(data, 30, tag="new")  # same size and layout, other content
    after = load_step_datasets(args, 1)
    assert all(" old " in row["completion"] for row in before.train)
    assert all(" new " in row["completion"] for row in after.train)
    assert len(entries(cache)) == 2
    load_step_datasets(
        DataArguments(datasets=[str(data)], data_cache_dir=str(cache), eval_split_ratio=0, data_split="1,1,1"), 1
    )
    load_step_datasets(args, 2)
    assert len(entries(cache)) == 4
    load_step_datasets(args, 2)  # no new entry for a repeat
    assert len(entries(cache)) == 4


def test_changing_a_file_in_a_folder_invalidates(tmp_path):
    folder, cache = tmp_path / "folder", tmp_path / "cache"
    folder.mkdir()
    write_pairs(folder / "train.jsonl", 10, tag="old")
    write_pairs(folder / "eval.jsonl", 4, tag="held")
    args = DataArguments(datasets=[str(folder)], data_cache_dir=str(cache), data_split="0,1,0")
    assert all(" held " in row["chosen"] for row in load_step_datasets(args, 2).eval)
    write_pairs(folder / "eval.jsonl", 4, tag="changed")
    assert all(" changed " in row["chosen"] for row in load_step_datasets(args, 2).eval)


def test_tiny_sort_sizes_are_part_of_the_key(tmp_path, monkeypatch):
    from rlhf_trl.data import tiny_sort

    args = DataArguments(datasets=["tiny-sort"], data_cache_dir=str(tmp_path))
    monkeypatch.setitem(tiny_sort.TINY_SIZES, 3, 10)
    assert len(load_step_datasets(args, 3).train) == 10
    monkeypatch.setitem(tiny_sort.TINY_SIZES, 3, 12)
    assert len(load_step_datasets(args, 3).train) == 12


def test_errors_are_not_cached(tmp_path):
    data, cache = tmp_path / "pairs.jsonl", tmp_path / "cache"
    data.write_text('{"prompt": "Human: q Assistant:", "chosen": "", "rejected": " n"}\n', encoding="utf-8")
    args = DataArguments(datasets=[str(data)], data_cache_dir=str(cache))
    with pytest.raises(Exception, match="empty string"):
        load_step_datasets(args, 2)
    assert not cache.exists() or entries(cache) == []
