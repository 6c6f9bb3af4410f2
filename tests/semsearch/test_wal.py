"""The write-ahead log: records round-trip, a torn tail is dropped, a damaged middle is refused, group commit."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from semsearch.index import WalCorruptError, WalRecord, WalUnavailableError, WriteAheadLog


def upsert(seq: int, n: int = 2) -> WalRecord:
    rng = np.random.default_rng(seq)
    return WalRecord(
        seq,
        "upsert",
        [f"d{seq}-{i}" for i in range(n - 1)] + [seq],
        [f"text {seq} {i} ☃" for i in range(n)],
        [{"i": i, "nested": {"x": [1, 2.5, None]}} for i in range(n)],
        rng.standard_normal((n, 8)).astype(np.float32),
    )


def write(directory: Path, records: list[WalRecord], per_call: int = 1) -> WriteAheadLog:
    wal = WriteAheadLog(directory)
    assert wal.recover() == []
    for start in range(0, len(records), per_call):
        wal.append(records[start : start + per_call])
    wal.close()
    return wal


def test_records_round_trip_exactly(tmp_path: Path) -> None:
    records = [upsert(1), WalRecord(2, "delete", ["a", 7]), upsert(3, 5)]
    write(tmp_path, records)
    got = WriteAheadLog(tmp_path).recover()
    assert [(r.seq, r.op, r.ids, r.texts, r.metadata) for r in got] == [
        (r.seq, r.op, r.ids, r.texts, r.metadata) for r in records
    ]
    for a, b in zip(got, records, strict=True):
        if a.vectors is None:
            assert b.vectors is None
        else:
            assert np.array_equal(a.vectors, b.vectors)


def test_group_commit_one_fsync_per_append(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.recover()
    wal.append([upsert(1), upsert(2), upsert(3)])
    wal.append([upsert(4)])
    assert wal.syncs == 2
    assert wal.next_seq == 5
    with pytest.raises(ValueError):
        wal.append([upsert(9)])  # sequence numbers are consecutive


@pytest.mark.parametrize("cut", [1, 7, 12, 40])
def test_torn_last_record_is_dropped(tmp_path: Path, cut: int) -> None:
    write(tmp_path, [upsert(1), upsert(2), upsert(3)])
    (path,) = WriteAheadLog(tmp_path).files()
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.truncate(size - cut)  # the crash: the last record only partly on disk
    wal = WriteAheadLog(tmp_path)
    got = wal.recover()
    assert [r.seq for r in got] == [1, 2]
    assert wal.next_seq == 3  # the torn record was never acknowledged: its number is reused
    wal.append([upsert(3)])
    wal.close()
    assert [r.seq for r in WriteAheadLog(tmp_path).recover()] == [1, 2, 3]


def test_garbage_tail_is_dropped(tmp_path: Path) -> None:
    write(tmp_path, [upsert(1)])
    (path,) = WriteAheadLog(tmp_path).files()
    with path.open("ab") as fh:
        fh.write(b"\0" * 4096)  # a file extended by the crash, never written
    assert [r.seq for r in WriteAheadLog(tmp_path).recover()] == [1]


def test_corrupt_middle_record_stops_recovery(tmp_path: Path) -> None:
    write(tmp_path, [upsert(1), upsert(2), upsert(3)])
    (path,) = WriteAheadLog(tmp_path).files()
    data = bytearray(path.read_bytes())
    data[30] ^= 0xFF  # inside record 1's payload: records 2 and 3 follow
    path.write_bytes(bytes(data))
    with pytest.raises(WalCorruptError) as e:
        WriteAheadLog(tmp_path).recover()
    assert str(path) in e.value.message and "at byte 0" in e.value.message


def test_corruption_in_an_older_file_stops_recovery(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.recover()
    wal.append([upsert(1)])
    wal.rotate()
    wal.append([upsert(2)])
    wal.close()
    first = WriteAheadLog(tmp_path).files()[0]
    first.write_bytes(first.read_bytes()[:-3])  # not the last file: not a crash's torn tail
    with pytest.raises(WalCorruptError):
        WriteAheadLog(tmp_path).recover()


def test_flushed_records_are_skipped_and_their_files_dropped(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.recover()
    wal.append([upsert(1), upsert(2)])
    wal.rotate()
    wal.append([upsert(3)])
    wal.mark_flushed(2)
    assert len(wal.files()) == 1
    wal.close()
    again = WriteAheadLog(tmp_path)
    assert [r.seq for r in again.recover()] == [3]
    assert again.next_seq == 4
    assert [r.seq for r in WriteAheadLog(tmp_path).recover(flushed=3)] == []


def test_failed_append_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.recover()
    wal.append([upsert(1)])

    real_fsync, failures = os.fsync, [1]

    def full(fd: int) -> None:  # the append's fsync fails once; cutting it back works
        if failures:
            failures.pop()
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WalUnavailableError) as e:
        wal.append([upsert(2), upsert(3)])
    assert e.value.detail["disk_full"] is True
    monkeypatch.undo()
    assert wal.next_seq == 2
    wal.append([upsert(2)])
    wal.close()
    assert [r.seq for r in WriteAheadLog(tmp_path).recover()] == [1, 2]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_directory_is_a_clear_error(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    wal_dir.mkdir()
    wal_dir.chmod(0o555)
    try:
        with pytest.raises(WalUnavailableError, match="not writable"):
            WriteAheadLog(wal_dir).recover()
    finally:
        wal_dir.chmod(0o755)
