"""environment.yml (conda) and requirements.lock (make env) describe the same environment."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            pins[name.lower()] = pinned
    return pins


def test_conda_environment_matches_lock():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip_deps = next(d["pip"] for d in deps if isinstance(d, dict))
    pins = lock_pins()
    assert len(pip_deps) >= 10
    for dep in pip_deps:
        name, _, pinned = dep.partition("==")
        assert pinned, f"environment.yml: {dep} is not pinned"
        assert pins.get(name.lower()) == pinned, f"environment.yml pins {dep}, requirements.lock {pins.get(name.lower())}"
    assert "pipeline/build_fairseq.py" in (REPO / "environment.yml").read_text()


def test_installed_versions_match_lock():
    pins = lock_pins()
    for name in ("torch", "snakemake", "sacrebleu", "sentencepiece", "sacremoses", "numpy", "hydra-core"):
        assert version(name).split("+")[0] == pins[name], name
