"""utill.py: the learning-rate schedule on integer epoch boundaries, top-k accuracy, meters."""
import pytest
import torch

from utill import AverageMeter, accuracy, lr_at_epoch, lr_milestones


def test_schedule_for_100_epochs_matches_the_authors():
    # their loop divides by 10 after training epoch 50, 70 and 90 (0-based)
    lrs = [lr_at_epoch(0.3, e, 100) for e in range(100)]
    assert lrs[0] == lrs[50] == 0.3
    assert lrs[51] == pytest.approx(0.03) and lrs[70] == pytest.approx(0.03)
    assert lrs[71] == pytest.approx(0.003) and lrs[90] == pytest.approx(0.003)
    assert lrs[91] == pytest.approx(0.0003) and lrs[99] == pytest.approx(0.0003)
    assert len(set(lrs)) == 4


def test_every_decay_happens_when_percentages_are_not_integers():
    # 0.5*25 = 12.5, 0.7*25 = 17.5, 0.9*25 = 22.5: the authors' float test skips all three
    assert lr_milestones(25) == [12, 17, 22]
    assert lr_at_epoch(1.0, 24, 25) == pytest.approx(1e-3)
    assert lr_milestones(3) == [1, 2, 2]
    assert [lr_at_epoch(1.0, e, 3) for e in range(3)] == pytest.approx([1.0, 1.0, 0.1])


def test_topk_accuracy_on_non_contiguous_output():
    output = torch.tensor([[0.1, 0.9, 0.0, 0.3, 0.2, 0.5],
                           [0.8, 0.1, 0.0, 0.2, 0.3, 0.4],
                           [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
                           [0.5, 0.4, 0.3, 0.2, 0.1, 0.0]]).t().contiguous().t()
    assert not output.is_contiguous()
    target = torch.tensor([1, 5, 0, 2])
    top1, top2, top5 = accuracy(output, target, topk=(1, 2, 5))
    # row 0: top1 hit; row 1: class 5 ranks 2nd; row 2: class 0 ranks last; row 3: 3rd
    assert top1.item() == pytest.approx(25.0)
    assert top2.item() == pytest.approx(50.0)
    assert top5.item() == pytest.approx(75.0)


def test_average_meter_weights_by_count():
    m = AverageMeter()
    m.update(1.0, n=3)
    m.update(3.0, n=1)
    assert m.avg == pytest.approx(1.5) and m.count == 4 and m.val == 3.0
