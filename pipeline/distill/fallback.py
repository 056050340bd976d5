"""Distillation reports itself: the share of pairs whose target is not the teacher's.

A filtered pair falls back to its reference (on_filtered: reference) or is dropped (drop); either
way the student does not learn the teacher's output for it. When the filters reject most targets the
"distilled" students are baselines under another name, so the share is checked against two
thresholds (config distill.max_fallback_share, default 0.20: a warning; distill.fail_fallback_share,
default 0.90: an error), both naming the filters responsible and their counts. The share and the
thresholds go into the statistics (fallback_share, fallback_check), so the report can show them.
"""

from __future__ import annotations

import logging

from pipeline.errors import ConfigError, DataError

log = logging.getLogger("pipeline.distill.fallback")
WARN_SHARE = 0.20
FAIL_SHARE = 0.90


def fallback_share(stats: dict) -> float:
    """Pairs that fell back to the reference or were dropped, as a share of the pairs in (exact counts)."""
    return stats["filtered"]["total"] / stats["pairs_in"] if stats["pairs_in"] else 0.0


def _culprits(stats: dict) -> str:
    counts = {name: n for name, n in stats["filtered"].items() if name != "total" and n}
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def check_fallback(stats: dict, warn_share: float = WARN_SHARE, fail_share: float = FAIL_SHARE) -> dict:
    """Add fallback_share and fallback_check to stats (in place, and returned); warn or fail above the thresholds."""
    if not 0 <= warn_share <= 1 or not 0 <= fail_share <= 1:
        raise ConfigError(f"distill.max_fallback_share ({warn_share}) and distill.fail_fallback_share ({fail_share}) must lie in [0, 1]")
    share = fallback_share(stats)
    total, n = stats["filtered"]["total"], stats["pairs_in"]
    what = "fell back to the reference" if stats.get("on_filtered", "reference") == "reference" else "were dropped"
    message = (f"{share:.1%} of the distilled pairs ({total} of {n}) {what}, rejected by the filters: {_culprits(stats)}")
    status = "ok"
    if share > fail_share:
        raise DataError(f"{message}; above distill.fail_fallback_share {fail_share}: the students would learn "
                        "the references, not the teacher (loosen distill.filters or check the teacher)")
    if share > warn_share:
        status = "warning"
        log.warning("%s; above distill.max_fallback_share %s", message, warn_share)
    stats["fallback_share"] = round(share, 4)
    stats["fallback_check"] = {"max_fallback_share": warn_share, "fail_fallback_share": fail_share, "status": status}
    return stats
