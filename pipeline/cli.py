"""What every stage CLI shares: bad input ends the run with one clear line, not a traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from pipeline.errors import PipelineError
from pipeline.faults import maybe_fail


def stage_name() -> str:
    """The running stage's module name (`train` for `python -m pipeline.train`)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name.rpartition(".")[2] if spec else ""


def run(main: Callable[[], None]) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
        stream=sys.stderr,
    )
    # Tests arm this (PIPELINE_FAULT_ONCE) to check that a failed job is retried; a no-op otherwise.
    maybe_fail(stage_name())
    try:
        main()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
