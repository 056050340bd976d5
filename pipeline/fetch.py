"""Obtain a parallel corpus, verify it and write its splits as plain UTF-8 text.

    python -m pipeline.fetch multi30k --src de --tgt en --mirror DIR --out work/data/raw
    python -m pipeline.fetch files --src de --tgt en --train-src a.de --train-tgt a.en \
        --dev-src ... --dev-tgt ... --test-src ... --test-tgt ... --out work/data/raw

Writes {out}/{split}.{lang} for split in train, dev, test. Everything is read and checked
(checksums, UTF-8, alignment, no empty split) before the first output file is written.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import urllib.request
from pathlib import Path

import yaml

from pipeline.cli import run
from pipeline.corpus import read_error, read_parallel, write_lines
from pipeline.errors import ConfigError, DataError

SPLITS = ("train", "dev", "test")
SOURCES_DIR = Path(__file__).resolve().parent.parent / "data"
log = logging.getLogger("pipeline.fetch")


def load_source(name: str) -> dict:
    path = SOURCES_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"{path}: no definition for corpus source '{name}'")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as err:
        raise read_error(path, err) from None
    return h.hexdigest()


def download(url: str, path: Path) -> None:
    """Fetch `url` to `path` through a partial file: an interrupted download leaves no `path`."""
    log.info("downloading %s", url)
    partial = path.with_name(path.name + ".part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as out:
            shutil.copyfileobj(response, out)
        partial.replace(path)
    except (OSError, ValueError) as err:  # URLError, HTTPError and timeouts are OSErrors; a bad URL a ValueError
        partial.unlink(missing_ok=True)
        reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or err
        raise DataError(f"{url}: download to {path} failed ({reason}); "
                        "without network, put the files in a local directory and set data.mirror") from None


def obtain(source: dict, filename: str, mirror: Path | None, cache: Path) -> Path:
    """A verified local copy of one file of the source: from the mirror or downloaded."""
    expected = source["sha256"][filename]
    if mirror is not None and (mirror / filename).exists():
        path = mirror / filename
    else:
        path = cache / filename
        if not path.exists():
            download(source["url"].format(file=filename), path)
    actual = sha256(path)
    if actual != expected:
        raise DataError(f"{path}: sha256 {actual} does not match the expected {expected}")
    return path


def fetch_definition(name: str, src: str, tgt: str, mirror: Path | None, cache: Path) -> dict[str, tuple[Path, Path]]:
    source = load_source(name)
    for lang in (src, tgt):
        if lang not in source["languages"]:
            raise ConfigError(
                f"data/{name}.yaml: language '{lang}' not available (has {', '.join(source['languages'])})"
            )
    if src == tgt:
        raise ConfigError(f"source and target language are both '{src}'")
    if mirror is not None and not mirror.is_dir():
        log.warning("mirror %s does not exist: downloading from %s", mirror, source["url"])
        mirror = None
    files = {}
    for split in SPLITS:
        pattern = source["splits"][split]["file"]
        files[split] = tuple(obtain(source, pattern.format(lang=lang), mirror, cache) for lang in (src, tgt))
    return files


def prepare(files: dict[str, tuple[Path, Path]], src: str, tgt: str, out: Path, max_lines: dict[str, int]) -> dict[str, int]:
    """Validate every split, then write them: nothing is written if any split is bad."""
    corpus = {}
    for split, (src_path, tgt_path) in files.items():
        src_lines, tgt_lines = read_parallel(src_path, tgt_path, split)
        limit = max_lines.get(split)
        corpus[split] = (src_lines[:limit], tgt_lines[:limit])
    for split, (src_lines, tgt_lines) in corpus.items():
        write_lines(out / f"{split}.{src}", src_lines)
        write_lines(out / f"{split}.{tgt}", tgt_lines)
    return {split: len(pair[0]) for split, pair in corpus.items()}


def parse_max_lines(items: list[str]) -> dict[str, int]:
    limits = {}
    for item in items:
        split, _, number = item.partition("=")
        if split not in SPLITS or not number.isdigit() or int(number) < 1:
            raise ConfigError(f"--max-lines {item!r}: expected SPLIT=N with SPLIT in {SPLITS} and N >= 1")
        limits[split] = int(number)
    return limits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="'files' or the name of a definition in data/ (e.g. multi30k)")
    parser.add_argument("--src", required=True)
    parser.add_argument("--tgt", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--mirror", type=Path, help="local directory holding the source's files")
    parser.add_argument("--cache", type=Path, default=Path("work/downloads"))
    parser.add_argument("--max-lines", nargs="*", default=[], help="SPLIT=N: keep the first N lines (smoke runs)")
    for split in SPLITS:
        parser.add_argument(f"--{split}-src", type=Path)
        parser.add_argument(f"--{split}-tgt", type=Path)
    args = parser.parse_args()
    if args.source == "files":
        files = {}
        for split in SPLITS:
            pair = getattr(args, f"{split}_src"), getattr(args, f"{split}_tgt")
            if None in pair:
                raise ConfigError(f"source 'files' needs --{split}-src and --{split}-tgt")
            files[split] = pair
    else:
        files = fetch_definition(args.source, args.src, args.tgt, args.mirror, args.cache)
    counts = prepare(files, args.src, args.tgt, args.out, parse_max_lines(args.max_lines))
    log.info("wrote %s to %s", ", ".join(f"{s}: {n} pairs" for s, n in counts.items()), args.out)


if __name__ == "__main__":
    run(main)
