"""Evaluation data: the offline stdlib haystack, synthetic task families, dataset loaders.

The lowest of the job packages: it imports nothing from ``jobs``, ``evaluation`` or ``training``,
and no torch (the generators only need a tokenizer). ``swaa make-data`` lives in
``swaa_patch/jobs/make_data.py``, which writes these rows to files.
"""

from .loaders import load_records
from .synthetic import generate_task, make_sample, tokenizer_counter
from .tasks import TASKS

__all__ = ["TASKS", "generate_task", "load_records", "make_sample", "tokenizer_counter"]
