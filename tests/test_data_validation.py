"""Bad records and files: clear errors naming file, record and field, or counted skips; never a silent drop."""

from __future__ import annotations

import json

import pytest

from rlhf_trl.data import DataArguments, DataValidationError, load_step_datasets

GOOD = {"prompt": "Human: hello there Assistant:", "chosen": " hi, how can I help?", "rejected": " go away"}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return str(path)


def good_records(count):
    return [{**GOOD, "prompt": f"Human: hello number {index} Assistant:"} for index in range(count)]


def load(path, step=2, **settings):
    settings.setdefault("data_split", "1,1,1")
    return load_step_datasets(DataArguments(datasets=[path], **settings), step)


BAD_RECORDS = [
    ({"prompt": GOOD["prompt"], "chosen": GOOD["chosen"]}, "rejected", "missing field"),
    ({**GOOD, "chosen": "   "}, "chosen", "empty string"),
    ({**GOOD, "rejected": 42}, "rejected", "not a string"),
    ({**GOOD, "prompt": None}, "prompt", "missing field"),
    ({**GOOD, "rejected": GOOD["chosen"]}, "rejected", "chosen equals rejected"),
    ({**GOOD, "prompt": ["not", "messages"]}, "prompt", "invalid messages"),
]


@pytest.mark.parametrize(("bad", "field", "reason"), BAD_RECORDS)
def test_bad_record_error_names_file_record_and_field(tmp_path, bad, field, reason):
    records = good_records(5)
    records.insert(3, bad)  # record 4 (line 4)
    path = write_jsonl(tmp_path / "pairs.jsonl", records)
    with pytest.raises(DataValidationError) as caught:
        load(path)
    error = caught.value
    assert (error.source, error.record_number, error.field, error.reason) == (path, 4, field, reason)
    message = str(error)
    assert "\n" not in message
    assert path in message and "record 4" in message and f"field {field!r}" in message and reason in message


def test_bad_record_in_another_steps_share_still_fails_early(tmp_path):
    records = good_records(30)
    records[-1] = {**GOOD, "chosen": ""}
    path = write_jsonl(tmp_path / "pairs.jsonl", records)
    for step in (1, 2, 3):
        with pytest.raises(DataValidationError, match="record 30"):
            load(path, step)


def test_prompt_longer_than_limit(tmp_path):
    records = good_records(4) + [{**GOOD, "prompt": "Human: " + "long " * 50 + "Assistant:"}]
    path = write_jsonl(tmp_path / "pairs.jsonl", records)
    with pytest.raises(DataValidationError, match=r"record 5, field 'prompt': prompt too long \(267 > 100"):
        load(path, max_prompt_length_chars=100)
    assert load(path, max_prompt_length_chars=1000).train is not None


def test_skip_invalid_records_counts_every_reason(tmp_path):
    records = good_records(20)
    for position, (bad, _, _) in enumerate(BAD_RECORDS):
        records.insert(position * 3, bad)
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, records)
    with path.open("a", encoding="utf-8") as handle:
        handle.write("{not json\n")
    loaded = load(str(path), eval_split_ratio=0, skip_invalid_records=True, shared_by_steps="1,2,3")
    summary = loaded.summary
    assert summary.counts_by_reason == {
        "missing field: rejected": 1,
        "empty string: chosen": 1,
        "not a string: rejected": 1,
        "missing field: prompt": 1,
        "chosen equals rejected: rejected": 1,
        "invalid messages: prompt": 1,
        "unreadable record": 1,
    }
    report = summary.sources[0]
    assert report.records_read == 27 and report.records_valid == 20 and summary.total_skipped == 7
    assert len(loaded.train) == report.train_used and 0 < report.train_used < 20
    text = str(summary)
    assert "unreadable record" in text and "skipped 1 x empty string: chosen" in text and "27" in text
    assert f"first at {path} record 27" in text  # the broken JSON line (line 27)


def test_every_record_invalid_raises_even_when_skipping(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{**GOOD, "chosen": ""}] * 3)
    with pytest.raises(DataValidationError, match="none of its 3 records is usable"):
        load(path, skip_invalid_records=True)


def test_empty_file_and_empty_list(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match="empty dataset"):
        load(str(empty))
    empty_list = tmp_path / "empty.json"
    empty_list.write_text("[]", encoding="utf-8")
    with pytest.raises(DataValidationError, match="empty dataset"):
        load(str(empty_list))


def test_unreadable_files(tmp_path):
    broken_json = tmp_path / "broken.json"
    broken_json.write_text('[{"prompt": "x",', encoding="utf-8")
    with pytest.raises(DataValidationError, match="broken.json: not valid JSON"):
        load(str(broken_json))
    not_parquet = tmp_path / "data.parquet"
    not_parquet.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataValidationError, match="not a readable Parquet file"):
        load(str(not_parquet))
    scalar = tmp_path / "scalar.json"
    scalar.write_text("3", encoding="utf-8")
    with pytest.raises(DataValidationError, match="expected a JSON list of records"):
        load(str(scalar))
    with pytest.raises(DataValidationError, match="unsupported file type"):
        (tmp_path / "notes.txt").write_text("hi", encoding="utf-8")
        load(str(tmp_path / "notes.txt"))


def test_wrong_encoding(tmp_path):
    latin = tmp_path / "latin.json"
    latin.write_bytes(json.dumps(good_records(3), ensure_ascii=False).replace("hello", "h\u00e9llo").encode("latin-1"))
    with pytest.raises(DataValidationError, match="latin.json: not valid UTF-8 text at line 1"):
        load(str(latin))
    lines = tmp_path / "latin.jsonl"
    content = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in good_records(4))
    lines.write_bytes(
        content.encode("utf-8")
        + json.dumps({**GOOD, "chosen": " caf\u00e9"}, ensure_ascii=False).encode("latin-1")
        + b"\n"
    )
    with pytest.raises(DataValidationError, match=r"latin.jsonl, record 5: unreadable record \(not valid UTF-8"):
        load(str(lines))
    assert load(str(lines), skip_invalid_records=True).summary.counts_by_reason == {"unreadable record": 1}
    with_bom = tmp_path / "bom.jsonl"
    with_bom.write_bytes(b"\xef\xbb\xbf" + content.encode("utf-8"))
    assert load(str(with_bom), data_split="0,1,0", eval_split_ratio=0).train.num_rows == 4


def test_record_that_is_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [*good_records(3), ["a", "list"]])
    with pytest.raises(DataValidationError, match=r"record 4: not an object \(got list\)"):
        load(path)


def test_csv_rows_with_wrong_cell_counts(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(
        'prompt,chosen,rejected\n"Human: a Assistant:", yes, no\n"Human: b Assistant:", yes, no, extra\n'
        '"Human: c Assistant:", yes\n',
        encoding="utf-8",
    )
    loaded = load(str(path), skip_invalid_records=True, data_split="0,1,0", eval_split_ratio=0)
    assert loaded.train["prompt"] == ["Human: a Assistant:"]
    assert loaded.summary.counts_by_reason == {"unreadable record": 1, "missing field: rejected": 1}


@pytest.mark.parametrize(
    ("ranking", "field", "detail"),
    [
        ({"responses": [" a"]}, "responses", "at least two"),
        ({"responses": [" a", " a"]}, "responses", "appears twice"),
        ({"responses": [" a", " b"], "scores": [1.0]}, "scores", "one number per response"),
        ({"responses": [" a", " b"], "scores": [1.0, 1.0]}, "scores", "all scores are equal"),
        ({"responses": [" a", " b"], "scores": [1.0, float("nan")]}, "scores", "finite"),
        ({"responses": [" a", " b"], "scores": [True, False]}, "scores", "numbers"),
        ({"responses": [" a", 3]}, "responses", "not a string"),
    ],
)
def test_bad_rankings(tmp_path, ranking, field, detail):
    good = [{"prompt": f"Human: q{index} Assistant:", "responses": [" x", " y"]} for index in range(3)]
    path = tmp_path / "ranks.jsonl"
    # json.dumps writes NaN, which Python's json reads back: the check must catch it.
    path.write_text(
        "".join(json.dumps(record) + "\n" for record in [*good, {"prompt": "Human: q Assistant:", **ranking}]),
        encoding="utf-8",
    )
    with pytest.raises(DataValidationError, match=f"record 4, field '{field}'.*{detail}"):
        load(str(path))


def test_adapter_filtered_records_are_counted_not_errors():
    from pathlib import Path

    folder = Path(__file__).parent / "fixtures" / "data" / "hub" / "openai" / "webgpt_comparisons"
    loaded = load_step_datasets(DataArguments(datasets=[str(folder)], data_split="0,1,0", eval_split_ratio=0), 2)
    assert loaded.summary.filtered_by_reason == {"tied scores": 1}
    assert len(loaded.train) == 4
    assert "filtered 1 x tied scores" in str(loaded.summary)
