"""A test-only fault switch: make one stage fail exactly once, to exercise retries.

    PIPELINE_FAULT_ONCE=<stage>:<marker file>[,<stage>:<marker file>...]

maybe_fail(stage) does nothing unless the variable names this stage. The first call that does creates
the marker file (atomically, so among parallel jobs only one fails) and exits with FAULT_EXIT_CODE;
every later call sees the marker and returns. Use an absolute marker path: cluster jobs may start in
another directory. The marker's directory is created when missing.

From a shell rule: `python -m pipeline.faults STAGE && real command ...`.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

ENV = "PIPELINE_FAULT_ONCE"
FAULT_EXIT_CODE = 3


def armed(stage: str, spec: str | None = None) -> Path | None:
    """The marker path when the fault spec names this stage, else None."""
    spec = os.environ.get(ENV, "") if spec is None else spec
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, marker = item.partition(":")
        if not sep or not name or not marker:
            raise ValueError(f"{ENV}: expected <stage>:<marker file>, got {item!r}")
        if name == stage:
            return Path(marker)
    return None


def maybe_fail(stage: str) -> None:
    """Exit with FAULT_EXIT_CODE the first time this stage runs under an armed fault switch."""
    marker = armed(stage)
    if marker is None:
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        print(f"fault: stage {stage!r} already failed once ({marker}); running normally", file=sys.stderr)
        return
    with os.fdopen(fd, "w") as out:
        out.write(f"stage={stage} host={socket.gethostname()} pid={os.getpid()} time={time.time():.3f}\n")
    print(f"fault: injected failure of stage {stage!r} ({ENV}, marker {marker}); the next attempt passes",
          file=sys.stderr)
    sys.exit(FAULT_EXIT_CODE)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m pipeline.faults STAGE")
    maybe_fail(sys.argv[1])
