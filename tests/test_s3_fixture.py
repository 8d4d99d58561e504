"""The local S3 server fixture works through fsspec with only the standard environment (what the storage code uses)."""
import pytest


def test_s3_round_trip_through_fsspec(s3_env):
    fsspec = pytest.importorskip("fsspec")
    pytest.importorskip("s3fs")
    fs = fsspec.filesystem("s3")
    fs.pipe(f"{s3_env}/a/b.txt", b"hello")
    assert fs.cat(f"{s3_env}/a/b.txt") == b"hello"
    assert fs.info(f"{s3_env}/a/b.txt")["ETag"]
