import os
import stat
from pathlib import Path

import pytest
import torch

from bntt.checkpoint import (WriteError, append_bytes, create_new, load_checkpoint, reported_write,
                             save_atomic, write_all, write_atomic)


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


def test_run_files_are_never_written_through_a_link(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"not the run's")
    link = tmp_path / "metrics.jsonl"
    link.symlink_to(target)
    with pytest.raises(OSError):
        append_bytes(link, b"a line\n")
    with pytest.raises(FileExistsError):
        create_new(link)
    write_atomic(link, lambda f: f.write(b"new"))  # replaces the link itself
    assert target.read_bytes() == b"not the run's"
    assert not link.is_symlink() and link.read_bytes() == b"new"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_failed_write_is_one_line_naming_the_file_and_what_is_kept():
    fd = os.open("/dev/full", os.O_WRONLY)  # every write fails with ENOSPC
    try:
        with pytest.raises(WriteError) as failed:
            with reported_write("runs/r/metrics.jsonl", "last.pt still holds epoch 1"):
                write_all(fd, b"x" * 100)
    finally:
        os.close(fd)
    assert str(failed.value) == ("cannot write runs/r/metrics.jsonl (no space left on device); "
                                 "last.pt still holds epoch 1")


def test_a_checkpoint_of_the_earlier_layout_loads_and_gives_its_logits():
    """tests/checkpoints/: the last.pt of a one-epoch run of the FC network on the bundled
    Sequential Fashion-MNIST subset (hidden 16, 16; T = 28), written by train.py before the
    networks were built from spiking blocks, and the logits that code gave for 8 test images
    in eval and train mode. The same file loads strictly into today's network and gives them."""
    from bntt.trained import load_trained

    here = Path(__file__).parent / "checkpoints"
    expected = torch.load(here / "fc_seqfashionmnist_logits.pt", weights_only=True)
    trained = load_trained(here / "fc_seqfashionmnist_last.pt")
    assert (trained.arch, trained.dataset, trained.model.hidden) == ("fc", "seqfashionmnist_subset", (16, 16))
    with torch.no_grad():
        eval_logits = trained.model(expected["images"])
        train_logits = trained.model.train()(expected["images"])
    torch.testing.assert_close(eval_logits, expected["eval_logits"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(train_logits, expected["train_logits"], rtol=1e-6, atol=1e-6)
    assert eval_logits.std() > 0.1
