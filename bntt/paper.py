"""The paper's constants and commands, in one place (docs/spec.md, sections 1 and 3).

Every module that needs one of these numbers imports it from here: the neuron, the coder,
BNTT, the models, the optimiser of train.py and the benchmarks. The values are those of the
authors' code; changing one here changes the method, not a setting.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# -- the network (docs/spec.md, section 1) --------------------------------------------------
THRESHOLD = 1.0          # theta: firing threshold of every LIF neuron, strict ">"
SURROGATE_SCALE = 0.3    # damping factor of the triangular surrogate gradient (Eq. 8)
POISSON_RESCALE = 2.0    # a pixel x fires with probability min(1, |x| / POISSON_RESCALE) (Eq. 1)
BN_EPS = 1e-4            # epsilon of every BNTT layer (Eq. 3)
BN_MOMENTUM = 0.1        # momentum of BNTT's running statistics (Eq. 4)
INIT_GAIN = 2.0          # Xavier-uniform gain of every conv and linear weight
LEAK_MEM = 0.95          # lambda of the VGG9 / CIFAR-10 command: every network's default leak

# The VGGs' conv widths, POOL for a 2x2 average pool, GLOBAL_POOL for a global one (section 2);
# the spiking VGGs and their non-spiking twins are built from these plans.
POOL, GLOBAL_POOL = "P", "G"
VGG9_PLAN = [64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL]
VGG11_PLAN = [64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, GLOBAL_POOL]

# -- the training recipe (docs/spec.md, section 3) ------------------------------------------
SGD_MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4      # on every parameter, BNTT's gammas included
LR_DECAY_PERCENTS = (50, 70, 90)  # the learning rate is divided by 10 after these % of epochs
LR_DECAY_FACTOR = 0.1


def sgd(parameters, lr: float, no_decay=(), weight_decay: float = WEIGHT_DECAY) -> torch.optim.SGD:
    """The paper's optimiser: SGD, momentum 0.9, weight decay 1e-4, no Nesterov. `no_decay`:
    parameters exempt from the weight decay, in a second group (train.py's --no-gamma_decay);
    `weight_decay` other than the paper's (train.py's --weight_decay). Both are analyses of the
    early exit, not the paper's recipe."""
    exempt = {id(p) for p in no_decay}
    parameters = list(parameters)
    groups = [{"params": [p for p in parameters if id(p) not in exempt]}]
    if exempt:
        groups.append({"params": [p for p in parameters if id(p) in exempt], "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=lr, momentum=SGD_MOMENTUM, weight_decay=weight_decay)


def lr_milestones(num_epochs: int) -> list[int]:
    """0-based epochs after which the learning rate drops, on integer epoch boundaries.

    The authors compare `epoch == 0.7 * num_epochs` in floating point, which silently skips a
    decay whenever the product is not an integer (e.g. 25 epochs). Integer arithmetic gives the
    same milestones as theirs whenever theirs fire (50, 70, 90 for 100 epochs) and floors the
    others (12, 17, 22 for 25 epochs).
    """
    return [num_epochs * p // 100 for p in LR_DECAY_PERCENTS]


def lr_at_epoch(base_lr: float, epoch: int, num_epochs: int) -> float:
    """Learning rate used while training 0-based `epoch`.

    As in the authors' loop, the decay is applied after training epoch m, so epoch m itself
    still runs at the previous rate: for 100 epochs, epochs 0-50 use base_lr, 51-70 base_lr/10,
    71-90 base_lr/100 and 91-99 base_lr/1000.
    """
    drops = sum(epoch > m for m in lr_milestones(num_epochs))
    return base_lr * LR_DECAY_FACTOR ** drops


def decay_alone(base_lr: float, num_epochs: int, steps_per_epoch: int,
                weight_decay: float = WEIGHT_DECAY) -> list[float]:
    """What the paper's SGD (momentum 0.9, the LR schedule above) makes of a parameter of 1 that
    gets no loss gradient: its value after each epoch, from weight decay alone. A BNTT gamma of
    a step that no loss reaches follows it, so it says when the gamma exit (Eq. 12) can fire.

        decay_alone(0.3, 100, 195)[50]      # CIFAR-10's recipe: after the 51 epochs at lr 0.3

    Each step is SGD's own update with the gradient 0: v = 0.9 v + wd p, p = p - lr v, so
    p falls by about lr * wd / (1 - 0.9) a step: 1 to 0.1 in 7,675 steps at lr 0.3, wd 1e-4.
    """
    p, v = 1.0, 0.0
    values = []
    for epoch in range(num_epochs):
        lr = lr_at_epoch(base_lr, epoch, num_epochs)
        for _ in range(steps_per_epoch):
            v = SGD_MOMENTUM * v + weight_decay * p
            p -= lr * v
        values.append(p)
    return values


@dataclass(frozen=True)
class PaperRun:
    """One training command of the paper (the authors' README) and the top-1 it reports."""
    arch: str
    dataset: str
    num_cls: int
    num_steps: int
    lr: float
    batch_size: int
    leak_mem: float
    num_epochs: int
    reported_top1: float


PAPER_RUNS = {
    "vgg9": PaperRun("vgg9", "cifar10", 10, num_steps=25, lr=0.3, batch_size=256, leak_mem=LEAK_MEM,
                     num_epochs=100, reported_top1=90.5),
    # CIFAR-100's 66.6% is quoted by secondary sources; the paper's table was not checked here.
    "vgg11": PaperRun("vgg11", "cifar100", 100, num_steps=30, lr=0.3, batch_size=128,
                      leak_mem=0.99, num_epochs=100, reported_top1=66.6),
}
