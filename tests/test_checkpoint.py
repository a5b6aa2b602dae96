import os
import stat

import pytest
import torch

from bntt.checkpoint import load_checkpoint, save_atomic, write_atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_files_get_the_permissions_of_a_plain_open(tmp_path, umask_022):
    # mkstemp creates 0600 files; a checkpoint or report others cannot read is a surprise.
    save_atomic({"x": torch.arange(3)}, tmp_path / "last.pt")
    write_atomic(tmp_path / "report.json", lambda f: f.write(b"{}"))
    for name in ("last.pt", "report.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["x"], torch.arange(3))
    assert (tmp_path / "report.json").read_bytes() == b"{}"


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
