"""The embedded tiny default: a synthetic sorting task with a gold scorer and a tiny base model built locally."""

from .task import gold_score, gold_scores, make_records, target_answer

__all__ = ["gold_score", "gold_scores", "make_records", "target_answer"]
