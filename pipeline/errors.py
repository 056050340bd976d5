"""The pipeline's errors: one base class, one subclass per kind of problem.

Every stage CLI (pipeline.cli.run) turns a PipelineError into one line, `error: <message>`, and exit
status 2; anything else is a bug and keeps its traceback. Messages name the file (and 1-based line),
the config key or the model at fault, so the user can act on them without reading code.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: a problem with the user's input, config or environment, not a bug."""


class DataError(PipelineError):
    """A corpus, shard or other data file is missing, malformed or inconsistent (names file and line)."""


class ConfigError(PipelineError, ValueError):
    """A config value or a combination of them cannot work (names the key)."""


class ModelError(PipelineError):
    """A checkpoint, dictionary or converted model is missing, unreadable or does not fit (names the file)."""


class BackendError(PipelineError):
    """A decoding backend cannot do what was asked (device, compute type, missing package)."""
