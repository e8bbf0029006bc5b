"""files.py: atomic writes leave the old content and no temporary entry when they fail, fsync what they publish,
and sha256_file is hashlib's digest of the bytes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from longssm import files
from longssm.errors import UserError


class Crash(Exception):
    pass


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_atomic_file_publishes_whole_or_not_at_all(tmp_path):
    target = tmp_path / "result.json"
    files.write_text_atomic(target, "old")
    with pytest.raises(Crash), files.atomic_file(target) as f:
        f.write("half of the new")
        raise Crash
    assert listing(tmp_path) == {"result.json": b"old"}
    with files.atomic_file(target, "wb") as f:
        f.write(b"new")
    assert listing(tmp_path) == {"result.json": b"new"}


def test_a_failed_rename_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    files.write_text_atomic(target, "old")

    def crash(tmp, path):
        raise Crash

    monkeypatch.setattr(files, "_publish", crash)
    with pytest.raises(Crash):
        files.write_text_atomic(target, "new")
    assert listing(tmp_path) == {"a.txt": b"old"}


def test_atomic_writes_fsync_the_file_and_the_directory(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def record(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else str(fd))
        return real(fd)

    monkeypatch.setattr(os, "fsync", record)
    files.write_text_atomic(tmp_path / "x.txt", "text")
    assert any(s.endswith(".tmp" + str(os.getpid())) for s in synced), synced  # the data, before the rename
    assert str(tmp_path) in synced  # the directory entry, after it
    synced.clear()
    with files.atomic_dir(tmp_path / "d") as d:
        (d / "a.bin").write_bytes(b"1")
        (d / "sub").mkdir()
        (d / "sub" / "b.bin").write_bytes(b"2")
    assert sum(s.endswith(("a.bin", "b.bin")) for s in synced) == 2 and str(tmp_path) in synced, synced
    tmp_dir = str(tmp_path / f".tmp-d-{os.getpid()}")
    assert tmp_dir in synced and tmp_dir + "/sub" in synced, synced  # the entries of the new tree, before the rename


def test_atomic_dir_refuses_an_existing_path_and_replaces_on_request(tmp_path):
    target = tmp_path / "ckpt"
    with files.atomic_dir(target) as d:
        (d / "w").write_text("v1")
    with pytest.raises(UserError, match="exists"), files.atomic_dir(target) as d:
        (d / "w").write_text("never")
    assert listing(tmp_path) == {"ckpt/w": b"v1"}
    with files.atomic_dir(target, replace=True) as d:
        (d / "w").write_text("v2")
    assert listing(tmp_path) == {"ckpt/w": b"v2"}  # no .old-, no .tmp- left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_atomic_dir_replaces_a_file_and_leaves_no_old_entry(tmp_path):
    target = tmp_path / "out"
    target.write_text("a file")
    with files.atomic_dir(target, replace=True) as d:
        (d / "w").write_text("v1")
    assert listing(tmp_path) == {"out/w": b"v1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("where", ["inside", "rename"])
def test_a_failed_directory_write_leaves_the_old_directory(tmp_path, monkeypatch, where):
    target = tmp_path / "ckpt"
    with files.atomic_dir(target) as d:
        (d / "w").write_text("v1")
    if where == "rename":
        monkeypatch.setattr(files, "_publish", lambda tmp, path: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash), files.atomic_dir(target, replace=True) as d:
        (d / "w").write_text("v2")
        if where == "inside":
            raise Crash
    assert listing(tmp_path) == {"ckpt/w": b"v1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


@pytest.mark.parametrize("size", [0, 10, 3 * (1 << 20) + 7])
def test_sha256_file_is_the_digest_of_the_bytes(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert files.sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert files.sha256_file(path, chunk=4096) == hashlib.sha256(data).hexdigest()
