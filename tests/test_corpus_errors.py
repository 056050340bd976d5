"""Every corpus read error names the file: bad and truncated gzip, directories, I/O errors (issue 18, item 3).

Real small files on disk, read through pipeline.corpus and through the stage CLIs, which must answer
with one line `error: ...` and exit status 2, never a gzip/zlib/OS traceback.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from conftest import MIRROR, REPO

from pipeline import fetch
from pipeline.corpus import count_lines, iter_lines, read_lines, read_parallel, write_lines
from pipeline.errors import DataError

LINES = [f"Zeile {i}: ein Mann mit einem Hund läuft über die Straße" for i in range(3000)]
TEXT = ("\n".join(LINES) + "\n").encode("utf-8")
READERS = {"read_lines": read_lines, "count_lines": count_lines, "iter_lines": lambda p: list(iter_lines(p))}


def run_stage(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, message: str) -> None:
    """Exit status 2 and `error: <message...>` as the last stderr line, without a traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {message}"), last


def plain_text_gz(tmp: Path) -> Path:
    path = tmp / "train.de.gz"
    path.write_bytes(TEXT)
    return path


def truncated_gz(tmp: Path) -> tuple[Path, int]:
    """A real gzip cut in the middle, and how many whole lines its readable part holds."""
    data = gzip.compress(TEXT)
    cut = data[: len(data) // 2]
    path = tmp / "train.de.gz"
    path.write_bytes(cut)
    readable = zlib.decompressobj(wbits=31).decompress(cut)
    assert 0 < readable.count(b"\n") < len(LINES)
    return path, readable.count(b"\n")


@pytest.mark.parametrize("reader", READERS)
def test_plain_text_named_gz(tmp_path: Path, reader: str):
    path = plain_text_gz(tmp_path)
    with pytest.raises(DataError) as err:
        READERS[reader](path)
    assert str(err.value) == (f"{path}: not a gzip file (Not a gzipped file (b'Ze')): "
                              "a plain-text file must not be named .gz")


@pytest.mark.parametrize("reader", READERS)
def test_truncated_gzip_names_file_and_last_good_line(tmp_path: Path, reader: str):
    path, whole_lines = truncated_gz(tmp_path)
    with pytest.raises(DataError) as err:
        READERS[reader](path)
    assert str(err.value).startswith(f"{path}: truncated gzip file: the compressed data ends after line {whole_lines} ")


def test_truncated_gzip_before_the_first_line(tmp_path: Path):
    path = tmp_path / "dev.en.gz"
    path.write_bytes(gzip.compress(TEXT)[:30])
    with pytest.raises(DataError, match=r"dev\.en\.gz: truncated gzip file: the compressed data ends before the end "
                                        r"of the first line"):
        read_lines(path)


def test_corrupt_gzip_data_and_bad_checksum(tmp_path: Path):
    # A good gzip member, then one whose first deflate block has the reserved block type 3.
    second = bytearray(gzip.compress(b"x\n"))
    second[10] = 0b111
    corrupt = tmp_path / "corrupt.gz"
    corrupt.write_bytes(gzip.compress(TEXT) + bytes(second))
    with pytest.raises(DataError) as err:
        read_lines(corrupt)
    assert str(err.value) == (f"{corrupt}: corrupt gzip data after line {len(LINES)} "
                              "(Error -3 while decompressing data: invalid block type)")

    data = bytearray(gzip.compress(b"ein Hund\nzwei Katzen\n"))
    data[-8] ^= 1  # the CRC-32 in the trailer
    bad_crc = tmp_path / "crc.gz"
    bad_crc.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"crc\.gz: corrupt gzip data after line 2 \(CRC check failed"):
        read_lines(bad_crc)


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("name", ["dev.de", "dev.de.gz"])
def test_directory_instead_of_file(tmp_path: Path, reader: str, name: str):
    path = tmp_path / name
    path.mkdir()
    with pytest.raises(DataError) as err:
        READERS[reader](path)
    assert str(err.value) == f"{path}: cannot read: Is a directory"


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux /proc")
def test_io_error_while_reading():
    # Reading /proc/self/mem from offset 0 fails with EIO: a real read error on an open file.
    with pytest.raises(DataError) as err:
        read_lines("/proc/self/mem")
    assert str(err.value) == "/proc/self/mem: cannot read: Input/output error"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_permission_denied(tmp_path: Path):
    path = tmp_path / "train.en"
    path.write_bytes(TEXT)
    path.chmod(0)
    for reader in READERS.values():
        with pytest.raises(DataError) as err:
            reader(path)
        assert str(err.value) == f"{path}: cannot read: Permission denied"


def test_missing_file(tmp_path: Path):
    for reader in READERS.values():
        with pytest.raises(DataError, match=r"nope\.de\.gz: no such file"):
            reader(tmp_path / "nope.de.gz")


def test_gzip_data_without_gz_suffix(tmp_path: Path):
    path = tmp_path / "train.de"
    path.write_bytes(gzip.compress(TEXT))
    with pytest.raises(DataError, match=r"train\.de: line 1: invalid UTF-8 \(byte 1: b'\\x8b'\): gzip data in a file "
                                        r"not named \.gz"):
        read_lines(path)


def test_read_parallel_names_the_bad_side(tmp_path: Path):
    good = tmp_path / "train.en"
    good.write_bytes(TEXT)
    bad = plain_text_gz(tmp_path)
    with pytest.raises(DataError, match=f"^{bad}: not a gzip file"):
        read_parallel(bad, good, "train")


def test_good_gzip_still_reads(tmp_path: Path):
    path = tmp_path / "train.de.gz"
    path.write_bytes(gzip.compress(TEXT))
    assert read_lines(path) == LINES and count_lines(path) == len(LINES)


def test_write_errors_name_the_file_and_leave_nothing(tmp_path: Path):
    blocker = tmp_path / "raw"
    blocker.write_text("a file where a directory should be\n")
    with pytest.raises(DataError, match=f"^{blocker}/train.de: cannot write: "):
        write_lines(blocker / "train.de", ["x"])

    def failing_lines():
        yield "first"
        raise DataError("the producer's own error")

    out = tmp_path / "out/train.de"
    with pytest.raises(DataError, match="^the producer's own error$"):
        write_lines(out, failing_lines())
    assert list(out.parent.iterdir()) == [], "no output and no temporary file after a failure"


def test_failed_download_names_the_url(tmp_path: Path):
    url = (tmp_path / "missing/train.de.gz").as_uri()
    with pytest.raises(DataError, match=f"^{url}: download to {tmp_path}/cache/train.de.gz failed .*data.mirror"):
        fetch.download(url, tmp_path / "cache/train.de.gz")
    assert not (tmp_path / "cache/train.de.gz").exists() and not (tmp_path / "cache/train.de.gz.part").exists()


# Through the stage CLIs: one line, exit status 2, nothing written.

def fetch_files(tmp: Path, train_src: Path) -> subprocess.CompletedProcess:
    other = {}
    for name, text in (("train.en", TEXT), ("dev.de", b"ein Hund\n"), ("dev.en", b"a dog\n"),
                       ("test.de", b"eine Katze\n"), ("test.en", b"a cat\n")):
        other[name] = tmp / name
        other[name].write_bytes(text)
    return run_stage("pipeline.fetch", "files", "--src", "de", "--tgt", "en", "--out", str(tmp / "out"),
                     "--train-src", str(train_src), "--train-tgt", str(other["train.en"]),
                     "--dev-src", str(other["dev.de"]), "--dev-tgt", str(other["dev.en"]),
                     "--test-src", str(other["test.de"]), "--test-tgt", str(other["test.en"]))


def test_fetch_cli_plain_text_gz(tmp_path: Path):
    path = plain_text_gz(tmp_path)
    proc = fetch_files(tmp_path, path)
    assert_one_line_error(proc, f"{path}: not a gzip file")
    assert not (tmp_path / "out").exists()


def test_fetch_cli_truncated_gzip(tmp_path: Path):
    path, whole_lines = truncated_gz(tmp_path)
    proc = fetch_files(tmp_path, path)
    assert_one_line_error(proc, f"{path}: truncated gzip file: the compressed data ends after line {whole_lines}")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not MIRROR.is_dir(), reason="Multi30k mirror not present")
def test_fetch_cli_directory_in_the_mirror(tmp_path: Path):
    mirror = tmp_path / "mirror"
    shutil.copytree(MIRROR, mirror)
    (mirror / "val.de.gz").unlink()
    (mirror / "val.de.gz").mkdir()
    proc = run_stage("pipeline.fetch", "multi30k", "--src", "de", "--tgt", "en", "--mirror", str(mirror),
                     "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"))
    assert_one_line_error(proc, f"{mirror}/val.de.gz: cannot read: Is a directory")
    assert not (tmp_path / "out").exists()


def test_normalize_cli_directory(tmp_path: Path):
    (tmp_path / "dev.de").mkdir()
    proc = run_stage("pipeline.normalize", "--lang", "de", str(tmp_path / "dev.de"), str(tmp_path / "out.de"))
    assert_one_line_error(proc, f"{tmp_path}/dev.de: cannot read: Is a directory")
    assert not (tmp_path / "out.de").exists()


def test_spm_train_cli_truncated_gzip(tmp_path: Path):
    # SentencePiece reads through a Python iterator and would wrap our error in its RuntimeError.
    path, whole_lines = truncated_gz(tmp_path)
    proc = run_stage("pipeline.spm", "train", "--model-prefix", str(tmp_path / "spm/spm"), "--vocab-size", "100",
                     str(path))
    assert_one_line_error(proc, f"{path}: truncated gzip file: the compressed data ends after line {whole_lines}")
    assert not (tmp_path / "spm/spm.model").exists()
