import os
import stat

import pytest

from m2det.errors import M2DetError
from m2det.io import atomic_path, atomic_write_json


def test_atomic_write_publishes_whole_file_with_normal_mode(tmp_path) -> None:
    target = tmp_path / "sub" / "result.json"
    atomic_write_json(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n'
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path) -> None:
    target = tmp_path / "model.pth"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]


def test_unwritable_destination_is_a_user_error(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(M2DetError, match="cannot write"):
        atomic_write_json(blocker / "out.json", {})
