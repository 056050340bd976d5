"""Criteria registered with fairseq when `--user-dir fairseq_plugins` is given."""

from . import word_kd  # noqa: F401  (registers --criterion word_kd)
