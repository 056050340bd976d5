"""What every stage CLI shares: bad input ends the run with one clear line, not a traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from pipeline.corpus import CorpusError


def run(main: Callable[[], None]) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
        stream=sys.stderr,
    )
    try:
        main()
    except CorpusError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
