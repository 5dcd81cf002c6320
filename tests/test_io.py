"""Atomic writes: a failed write leaves the old file and no temporary behind."""

import os
import stat

import pytest

from ws_engine.io import atomic_path, atomic_write_bytes, atomic_write_text


def test_atomic_write_replaces_and_keeps_permissions(tmp_path):
    target = tmp_path / "sub" / "out.json"
    atomic_write_text(target, "one")
    assert target.read_text() == "one"
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    umask = os.umask(0)
    os.umask(umask)
    # the permissions of any ordinary new file (mkstemp alone would give 0600)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_failed_write_leaves_old_content_and_no_temporary(tmp_path):
    target = tmp_path / "memory.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.suffix == ".safetensors" and tmp.parent == tmp_path
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["memory.safetensors"]
