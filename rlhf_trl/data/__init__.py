"""The data layer: Hub datasets in TRL's formats, DS-Chat's named datasets and "tiny-sort", local files, the
shares of steps that read the same dataset, chat formats, checks.

Step scripts call ``load_step_datasets(DataArguments(...), step)`` and print ``.summary`` before training.
"""

from .arguments import DataArguments, SourceSpec, parse_data_split, parse_source_spec
from .conversation import messages_to_transcript, record_to_conversational, record_to_text, transcript_to_messages
from .errors import DataValidationError, RecordFiltered, RecordProblem
from .loading import StepDatasets, load_step_datasets
from .registry import DatasetAdapter, get_adapter, register_dataset, registered_names
from .summary import SourceReport, ValidationSummary
from .tiny_sort import TINY_SIZES

__all__ = [
    "DataArguments",
    "DataValidationError",
    "DatasetAdapter",
    "RecordFiltered",
    "RecordProblem",
    "SourceReport",
    "SourceSpec",
    "StepDatasets",
    "TINY_SIZES",
    "ValidationSummary",
    "get_adapter",
    "load_step_datasets",
    "messages_to_transcript",
    "parse_data_split",
    "parse_source_spec",
    "record_to_conversational",
    "record_to_text",
    "register_dataset",
    "registered_names",
    "transcript_to_messages",
]
