"""fairseq plugins of the pipeline: `fairseq-train ... --user-dir fairseq_plugins --criterion word_kd`."""

from . import criterions  # noqa: F401
