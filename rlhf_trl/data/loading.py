"""``load_step_datasets``: every source of ``DataArguments`` read, checked, cut for one step, mixed and cached.

For each source: read raw rows -> (adapter) -> check and normalise (``records.py``) -> convert the format if asked
(``conversation.py``) -> shape for the step. A source that several steps read gives each its disjoint ``data_split``
share; one that only this step reads is used whole (``sharing.py`` decides). Evaluation data is, in order of
preference: ``eval_datasets``, the source's own eval split (cut by the same shares), an automatic seeded hold-out of
``eval_split_ratio`` (or ``test_split_size``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import datasets

from . import tiny_sort
from .arguments import DataArguments
from .cache import cache_key, load_entry, save_entry
from .conversation import record_to_conversational, record_to_text
from .errors import DataValidationError, RecordFiltered, RecordProblem
from .local_files import RawRows
from .records import (
    FORMAT_NAMES,
    is_conversational,
    majority_kind,
    messages_to_prompt_completion,
    normalize_record,
    pair_to_ranking,
    step_record,
)
from .sharing import pipeline_readers, plan_for
from .sources import Source, resolve_source
from .splits import apply_weight, derived_seed, eval_holdout, shuffled, step_share_indices
from .summary import SourceReport, ValidationSummary

logger = logging.getLogger(__name__)


@dataclass
class StepDatasets:
    """What a step script trains on: TRL-format datasets and the summary to print before training."""

    train: datasets.Dataset = field(metadata={"help": "Training records in TRL's format for the step."})
    eval: datasets.Dataset | None = field(metadata={"help": "Evaluation records, or None when there are none."})
    summary: ValidationSummary = field(metadata={"help": "Counts of read, used, skipped and filtered records."})


@dataclass
class _SourcePart:
    label: str
    weight: float
    train: list[dict]
    eval: list[dict]
    fraction: float | None = None
    report: SourceReport | None = None


def load_step_datasets(args: DataArguments, step: int) -> StepDatasets:
    """Train and eval datasets of ``step`` (1: SFT, 2: reward model, 3: PPO prompts) from ``args``.

    Raises ``DataValidationError`` for bad data (naming file, record and field) and when nothing is left to train on.
    """
    if step not in (1, 2, 3):
        raise ValueError(f"step must be 1, 2 or 3, got {step}")
    sources = [resolve_source(spec) for spec in args.sources]
    eval_sources = [resolve_source(spec) for spec in args.eval_sources]
    readers = pipeline_readers(args)
    key = None
    if args.data_cache_dir:
        fingerprints = [(source.label, source.fingerprint()) for source in sources]
        if readers is not None:
            # What the other recipes name decides the shares, so it is part of the key (not just their paths).
            fingerprints.append(("pipeline", {step: sorted(map(str, names)) for step, names in readers.items()}))
        key = cache_key(args, step, fingerprints, [(source.label, source.fingerprint()) for source in eval_sources])
        cached = load_entry(args.data_cache_dir, step, key)
        if cached is not None:
            return StepDatasets(*cached)

    summary = ValidationSummary(step=step)
    parts = [
        _prepare_source(source, step, args, summary.report_for(source.label, "train"), readers) for source in sources
    ]
    parts += [
        _prepare_eval_source(source, step, args, summary.report_for(source.label, "eval")) for source in eval_sources
    ]
    _harmonize(parts, step)
    _apply_fractions([part for part in parts if part.report is not None and part.report.role == "train"])

    train_records = []
    for position, part in enumerate(parts):
        train_records += apply_weight(part.train, part.weight, derived_seed(args.data_split_seed, "weight", position))
    train_records = shuffled(train_records, derived_seed(args.data_split_seed, "mix", step))[: args.max_train_samples]
    eval_records = [record for part in parts for record in part.eval]
    eval_records = shuffled(eval_records, derived_seed(args.data_split_seed, "eval", step))[: args.max_eval_samples]
    if not train_records:
        raise DataValidationError(
            f"no training records for step {step} in {', '.join(args.source_labels)}: "
            + "; ".join(report.taken for report in summary.sources if report.taken),
            source=", ".join(args.source_labels),
            reason="empty",
        )
    train = _to_dataset(train_records, "train")
    evaluation = _to_dataset(eval_records, "eval") if eval_records else None
    if args.skip_invalid_records or summary.total_filtered:
        logger.warning("%s", summary)
    else:
        logger.info("%s", summary)
    if key is not None:
        save_entry(args.data_cache_dir, step, key, train, evaluation, summary)
    return StepDatasets(train=train, eval=evaluation, summary=summary)


def _source_kind(source: Source, rows: list[RawRows]) -> str:
    if not sum(len(raw_rows) for raw_rows in rows):
        raise DataValidationError(f"{source.label}: empty dataset (no records)", source=source.label, reason="empty")
    if source.adapter is not None:
        return source.adapter.kind
    return majority_kind((value for raw_rows in rows for _, value in raw_rows), source.label)


def _tiny_rows(step: int) -> tuple[list[RawRows], list[RawRows]]:
    train = RawRows(tiny_sort.NAME, list(enumerate(tiny_sort.train_records(step), start=1)))
    evaluation = RawRows(f"{tiny_sort.NAME}[eval]", list(enumerate(tiny_sort.eval_records(step), start=1)))
    return [train], [evaluation]


def _prepare_source(
    source: Source, step: int, args: DataArguments, report: SourceReport, readers: dict | None
) -> _SourcePart:
    """This step's training (and own eval) records of one ``--datasets`` source."""
    part = _SourcePart(source.label, source.spec.weight, [], [], source.spec.fraction, report)
    train_rows, eval_rows = _tiny_rows(step) if source.is_tiny else source.rows()
    kind = _source_kind(source, train_rows)
    report.format = FORMAT_NAMES[kind]
    if source.is_tiny:
        plan = None
        report.taken = f"the task's own records for step {step}"
    else:
        plan = plan_for(source.spec.identity, kind, step, args, readers)
        report.taken = plan.reason
        if not plan.used:
            report.used = False
            report.notes.append(plan.reason)
            logger.info("%s: %s", source.label, plan.reason)
            return part
    shares = plan.shares if plan is not None else None

    def keep(rows: list[RawRows], purpose: str) -> set[int] | None:
        if shares is None:
            return None
        count = sum(len(raw_rows) for raw_rows in rows)
        # The seed does not depend on the source's name or path: moving a file must not reshuffle its steps.
        seed = derived_seed(args.data_split_seed, "steps", purpose)
        return set(step_share_indices(count, shares, seed)[step - 1])

    part.train = _check_rows(train_rows, source, kind, step, args, report, keep(train_rows, "train"))
    if shares is not None and not part.train:
        report.notes.append(f"data_split {args.data_split!r} gives step {step} no records of this source")
    if args.eval_datasets:
        report.train_used = len(part.train)
        return part  # explicit eval sources replace the sources' own eval data
    if eval_rows and sum(len(raw_rows) for raw_rows in eval_rows):
        part.eval = _check_rows(eval_rows, source, kind, step, args, report, keep(eval_rows, "eval"))
    else:
        seed = derived_seed(args.data_split_seed, "holdout", step)
        held_out = eval_holdout(len(part.train), _holdout_ratio(args, len(part.train)), seed)
        part.eval = [record for position, record in enumerate(part.train) if position in held_out]
        part.train = [record for position, record in enumerate(part.train) if position not in held_out]
        if held_out:
            setting = "test_split_size" if args.test_split_size is not None else "eval_split_ratio"
            report.notes.append(f"{len(held_out)} records held out for evaluation ({setting})")
    report.train_used, report.eval_used = len(part.train), len(part.eval)
    return part


def _apply_fractions(parts: list[_SourcePart]) -> None:
    """TRL's ``fraction``: each source's target share of the mix, normalised; the mix is as large as it can be
    without repeating records, and each source keeps its first ``round(share * size)`` records."""
    given = [part.fraction is not None for part in parts]
    if not any(given):
        return
    if not all(given):
        missing = ", ".join(part.label for part in parts if part.fraction is None)
        raise DataValidationError(
            f"fraction is set for some datasets but not for {missing}: set it for all of them or none",
            source=missing,
            reason="bad fraction",
        )
    total_weight = sum(part.fraction for part in parts)
    size = min(len(part.train) * total_weight / part.fraction for part in parts)
    for part in parts:
        keep = round(part.fraction / total_weight * size)
        if keep < len(part.train):
            part.report.notes.append(f"fraction {part.fraction:g}: keeps {keep} of its {len(part.train)} records")
            part.train = part.train[:keep]
            part.report.train_used = len(part.train)


def _holdout_ratio(args: DataArguments, count: int) -> float:
    """``test_split_size`` (a share, or a count of records) when set, else ``eval_split_ratio``."""
    size = args.test_split_size
    if size is None:
        return args.eval_split_ratio
    if size < 1:
        return size
    return min(size, count) / count if count else 0.0


def _prepare_eval_source(source: Source, step: int, args: DataArguments, report: SourceReport) -> _SourcePart:
    """All records of an ``--eval_datasets`` source usable in this step (no step shares: it is eval-only)."""
    part = _SourcePart(source.label, source.spec.weight, [], [])
    train_rows, eval_rows = _tiny_rows(step) if source.is_tiny else source.rows()
    rows = eval_rows if source.is_tiny else [*train_rows, *eval_rows]
    kind = _source_kind(source, rows)
    report.format = FORMAT_NAMES[kind]
    plan = plan_for(source.spec.identity, kind, step, args, None)
    if not plan.used:
        report.used, report.taken = False, plan.reason
        report.notes.append(plan.reason)
        return part
    report.taken = "evaluation only: all its records"
    part.eval = _check_rows(rows, source, kind, step, args, report, None)
    report.eval_used = len(part.eval)
    return part


def _convert(value: object, source: Source, kind: str, step: int, args: DataArguments) -> dict:
    if isinstance(value, RecordProblem):
        raise value
    record = source.adapter.convert_row(value) if source.adapter is not None else value
    record = normalize_record(record, kind, args.max_prompt_length_chars)
    if args.record_format == "conversational":
        record = record_to_conversational(record)
    elif args.record_format == "text":
        record = record_to_text(record)
    return step_record(record, kind, step)


def _check_rows(
    rows: list[RawRows],
    source: Source,
    kind: str,
    step: int,
    args: DataArguments,
    report: SourceReport,
    keep: set[int] | None,
) -> list[dict]:
    """Checked step records of ``rows`` whose running index is in ``keep`` (None: all).

    Every row is checked, kept or not, so a bad record stops step 1 rather than surfacing steps later. The
    running index counts bad rows too, so fixing a record does not move others between steps.
    """
    records, index, read_before, valid_before = [], 0, report.records_read, report.records_valid
    for raw_rows in rows:
        for number, value in raw_rows:
            report.records_read += 1
            location = f"{raw_rows.origin} record {number}"
            try:
                record = _convert(value, source, kind, step, args)
            except RecordFiltered as filtered:
                report.count_filter(filtered.reason, location)
            except RecordProblem as problem:
                if not args.skip_invalid_records:
                    raise DataValidationError.for_record(
                        raw_rows.origin, number, problem.field, problem.reason, problem.detail
                    ) from None
                reason = f"{problem.reason}: {problem.field}" if problem.field else problem.reason
                report.count_skip(reason, location)
            else:
                report.records_valid += 1
                if keep is None or index in keep:
                    records.append(record)
            index += 1
    read, valid = report.records_read - read_before, report.records_valid - valid_before
    if read == 0:
        raise DataValidationError(f"{source.label}: empty dataset (no records)", source=source.label, reason="empty")
    if valid == 0:
        reasons = ", ".join(f"{count} x {reason}" for reason, count in report.skipped.most_common(3))
        raise DataValidationError(
            f"{source.label}: none of its {read} records is usable ({reasons or 'all filtered'})",
            source=source.label,
            reason="all records invalid",
        )
    return records


def _harmonize(parts: list[_SourcePart], step: int) -> None:
    """Give all records of the step one shape, so they fit in one table; text and chat data never mix silently."""
    formats = {}
    for part in parts:
        for record in [*part.train, *part.eval]:
            formats.setdefault(is_conversational(record), part.label)
    language_modelling = {("text" in record): part.label for part in parts for record in [*part.train, *part.eval]}
    if step == 1 and len(language_modelling) > 1:
        raise DataValidationError(
            f"step 1 mixes language-modelling records ({language_modelling[True]}, field 'text') with "
            f"prompt/completion or messages records ({language_modelling[False]}); give step 1 one of the two",
            source=f"{language_modelling[True]}, {language_modelling[False]}",
            reason="mixed formats",
        )
    if len(formats) > 1:
        raise DataValidationError(
            f"step {step} mixes text records ({formats[False]}) and conversational records ({formats[True]}); "
            "set --record_format text or --record_format conversational",
            source=f"{formats[False]}, {formats[True]}",
            reason="mixed formats",
        )
    records = [record for part in parts for record in [*part.train, *part.eval]]
    keys = {key for record in records for key in record}
    for part in parts:
        try:
            if step == 1 and "messages" in keys and "prompt" in keys:
                part.train = [_as_prompt_completion(record) for record in part.train]
                part.eval = [_as_prompt_completion(record) for record in part.eval]
        except RecordProblem as problem:
            raise DataValidationError.for_record(
                part.label, None, problem.field, problem.reason, problem.detail
            ) from None
        if step == 2 and "responses" in keys and "chosen" in keys:
            part.train = [pair_to_ranking(record) if "chosen" in record else record for record in part.train]
            part.eval = [pair_to_ranking(record) if "chosen" in record else record for record in part.eval]
        if step == 3:
            # Extra columns of one source become empty (None) columns for the others.
            part.train = [{key: record.get(key) for key in sorted(keys)} for record in part.train]
            part.eval = [{key: record.get(key) for key in sorted(keys)} for record in part.eval]


def _as_prompt_completion(record: dict) -> dict:
    return messages_to_prompt_completion(record) if "messages" in record else record


def _to_dataset(records: list[dict], role: str) -> datasets.Dataset:
    import pyarrow

    try:
        return datasets.Dataset.from_list(records)
    except (pyarrow.ArrowException, TypeError, ValueError, OverflowError) as error:
        raise DataValidationError(
            f"cannot build the {role} table: a column holds values of different types across records ({error})",
            reason="mixed column types",
        ) from error
