"""Evaluation data: the offline stdlib haystack, synthetic task families, dataset loaders.

Light on purpose (no torch import): ``swaa make-data`` and the generators only need a tokenizer.
"""

from .loaders import load_records
from .synthetic import generate_task, make_sample, tokenizer_counter
from .tasks import TASKS

__all__ = ["TASKS", "generate_task", "load_records", "make_sample", "tokenizer_counter"]
