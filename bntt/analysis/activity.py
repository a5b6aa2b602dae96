"""Spike rates per layer and time step, and the energy of the synaptic operations against an ANN.

For a checkpoint on its test set (eval mode, Poisson draws fixed by --eval_seed, the multistep
engine) this counts, in one pass:

- spike rates: for the input and every spiking layer (named as its BNTT layer) and every step,
  the spikes per neuron per step, averaged over the test images and the layer's neurons (for
  the input: the non-zero inputs per input element per step);
- synaptic operations from the actual spikes: every non-zero input of a layer costs one
  accumulate (AC) per output it reaches, exactly, borders included; the ANN of the same
  architecture costs one multiply-accumulate (MAC) per weight use in one pass. With the 45 nm
  figures of Horowitz (2014) the paper uses, E_AC = 0.9 pJ and E_MAC = 4.6 pJ (--e_ac, --e_mac
  for other technologies), this gives the energy of both networks per image, layer by layer;
- beyond the paper: the energy of running only the first t steps against the accuracy after t
  steps (the readout accumulates, so one pass gives every prefix), and the same for the
  per-sample softmax-margin exit of bntt.early_exit;
- the paper's gamma exit (--exit_threshold alpha): the step it stops at, the accuracy and the
  energy there, and the share of the energy of all T steps it saves.

Every normalisation of the ablation (--norm) is counted alike: none of these numbers depends on
BNTT's gammas, and each normalisation folds into a scale and offset per neuron at inference.
For a checkpoint of the ANN twin (bntt/ann.py) there are no time steps and no spikes: the report
holds its MACs per layer, their energy at E_MAC each (the ANN side of the comparison) and its
top-1. What is and is not counted is listed in conventions(), which the report repeats.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from bntt import early_exit
from bntt.analysis.report import Report
from bntt.analysis.scoring import open_checkpoint, prefix_logits_pass
from bntt.cli import UsageError, check_scoring_flags, require_positive
from bntt.coding import SequenceEncoder
from bntt.data import DATASETS
from bntt.blocks import blocks
from bntt.engines import MULTISTEP, Multistep, run_steps, running_on
from bntt.trained import test_loader

# Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm: a 32-bit float add costs 0.9 pJ,
# a multiply 3.7 pJ, so a multiply-accumulate 4.6 pJ. The paper compares with these.
E_AC_45NM = 0.9
E_MAC_45NM = 4.6
DEFAULT_CONFIDENCES = (0.3, 0.5, 0.7, 0.9, 0.99)

# What each normalisation costs at inference, none of it a synaptic operation.
NORM_NOT_COUNTED = {
    "bntt": ("BNTT: at inference it folds into a per-step scale and offset of each neuron, no "
             "synaptic operation"),
    "bn": ("the BatchNorm shared by all steps: at inference it folds into one scale and offset "
           "of each neuron, the same at every step, no synaptic operation"),
    "tdbn": ("tdBN: at inference it folds into one scale and offset of each neuron, the same at "
             "every step, no synaptic operation"),
    "tebn": ("TEBN: at inference it folds into a per-step scale and offset of each neuron, no "
             "synaptic operation"),
    "tab": ("TAB: at inference it folds into a per-step scale and offset of each neuron, no "
            "synaptic operation"),
    "mpbn": ("MPBN: at inference its BatchNorm of the current folds into one scale and offset of "
             "each neuron, and its BatchNorm of the membrane into one threshold of each channel, "
             "no synaptic operation"),
    "none": "no normalisation (--norm none): nothing between the synapses and the neurons",
}
ANN_NOTE = ("a non-spiking network: no time steps and no spikes, so no spike rates, accumulates "
            "or energy along time; its energy is its MACs in one pass at E_MAC each, the ANN side "
            "of the comparison that the activity report of its SNN twin makes")

CONVENTIONS = {
    "snn_counted": [
        ("every non-zero input of a synaptic layer (conv or linear) costs one operation per output "
         "it reaches: for a conv, out_channels / groups times the number of output positions whose "
         "window covers the input position (exact, borders, stride, padding and dilation included); "
         "for a linear layer, out_features"),
        ("the input layer: the encoded input into the first layer; Poisson spikes are +-1, so "
         "accumulates (a -1 spike subtracts); real-valued inputs (direct coding of sequences) "
         "cost a MAC per output reached instead"),
        ("average pooling of spikes: a pooled value is non-zero where any of its spikes was; each "
         "non-zero pooled input counts as one AC per output reached, whatever its value (1/4 to 1): "
         "a convention; adding the weight once per underlying spike would cost up to 4 ACs"),
        "the readout (fc2 / fc_out): the spikes of the last hidden layer, accumulates",
    ],
    "snn_not_counted": [
        NORM_NOT_COUNTED["bntt"],
        "the neuron updates (leak, compare with the threshold, soft reset)",
        "memory accesses and data movement",
    ],
    "ann_counted": [
        ("the MACs of the same architecture in one pass: C_in / groups * k_h * k_w * C_out * "
         "H_out * W_out per conv, in * out per linear layer, readout included; its BatchNorm folds "
         "into the weights and its activations and pools are not counted"),
        ("a sequence network (one slice of the sample per step) needs one ANN pass per slice, "
         "so T passes"),
    ],
}


def conventions(norm: str) -> dict:
    """CONVENTIONS for a spiking network whose layers are normalised by `norm`."""
    return {**CONVENTIONS, "snn_not_counted": [NORM_NOT_COUNTED[norm], *CONVENTIONS["snn_not_counted"][1:]]}


# -- counting ---------------------------------------------------------------------------------

def conv_reach(conv: nn.Conv2d, height: int, width: int) -> torch.Tensor:
    """[height, width] int64: for every input position, the number of output positions of
    `conv` whose receptive field covers it (one output channel)."""
    if conv.padding_mode != "zeros":
        raise ValueError(f"only zero padding is counted, not {conv.padding_mode!r}")
    # The input gradient of sum(conv(x)) with an all-ones kernel counts, for every input
    # position, the (output position, tap) pairs that read it; a position reads an input
    # through at most one tap, so that is the number of windows covering it. Autograd resolves
    # the output size (the floor of a stride) and string paddings for us.
    with torch.enable_grad():
        x = torch.zeros(1, 1, height, width, dtype=torch.float64, requires_grad=True)
        ones = torch.ones(1, 1, *conv.kernel_size, dtype=torch.float64)
        out = F.conv2d(x, ones, None, conv.stride, conv.padding, conv.dilation)
        (grad,) = torch.autograd.grad(out.sum(), x)
    return grad[0, 0].round().long()


def synaptic_ops(synapse: nn.Module, inputs: torch.Tensor, reach: torch.Tensor | None = None) -> torch.Tensor:
    """Operations of `synapse` (Conv2d or Linear) on `inputs` [T, B, ...] as it receives them:
    one per output each non-zero input reaches. Returns [T, B] int64. `reach` is the conv's
    conv_reach for the input size, if already known."""
    if isinstance(synapse, nn.Conv2d):
        if reach is None:
            reach = conv_reach(synapse, *inputs.shape[-2:])
        per_position = torch.count_nonzero(inputs, dim=2)  # [T, B, H, W], over input channels
        covered = (per_position * reach.to(per_position.device)).sum(dim=(-2, -1))
        return covered * (synapse.out_channels // synapse.groups)
    if isinstance(synapse, nn.Linear):
        return torch.count_nonzero(inputs, dim=-1) * synapse.out_features
    raise TypeError(f"cannot count the operations of a {type(synapse).__name__}")


def _module_names(model) -> dict:
    return {id(m): name for name, m in model.named_modules()}


def part_name(names: dict, block, part) -> str:
    """A block's part as reports name it: the block's own name where the block holds the part
    (layer1.0.conv1 in ResNet-19), the part's where the network does (conv1, bntt1 in the
    paper's networks, which keep the authors' names)."""
    own, name = names[id(block)], names[id(part)]
    return own if name.startswith(own + ".") else name


def block_name(names: dict, block) -> str:
    """A spiking block's name in reports: that of its norm (bntt1, ..., bntt_fc in the paper's
    networks, whichever normalisation --norm put there), else of its synapse."""
    return part_name(names, block, block.norm if block.norm is not None else block.synapse)


def _layer_macs(synapse: nn.Module, output: torch.Tensor) -> dict:
    """Kind and MACs of a conv or linear layer that gives `output` (one sample, no batch)."""
    if isinstance(synapse, nn.Conv2d):
        kh, kw = synapse.kernel_size
        return {"kind": "conv", "macs": int(synapse.in_channels // synapse.groups * kh * kw * output.numel())}
    return {"kind": "linear", "macs": int(synapse.in_features * output.numel())}


def _macs(model, names: dict, run) -> list:
    """[{"layer", "kind", "macs"}, ...] for one sample, of the layers of `model` that `names`
    names ({id(module): name}), in the order `run()` uses them, in eval mode without gradients."""
    rows = []

    def record(layer, inputs, output):
        rows.append({"layer": names[id(layer)], **_layer_macs(layer, output[0])})

    hooks = [m.register_forward_hook(record) for m in model.modules() if id(m) in names]
    training = model.training
    try:
        model.eval()  # one sample: BatchNorms use their running statistics
        with torch.no_grad():
            run()
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return rows


def ann_macs(model, sample_shape) -> list:
    """MACs per synaptic layer of the ANN of `model`'s architecture for one input of
    `sample_shape` (one step's input without the batch: (C, H, W), or (features,)):
    [{"layer", "kind", "macs"}, ...] in the order the network runs its blocks, the readout
    last. One step of zeros runs through the network to see the shapes."""
    names = _module_names(model)
    synapses = {id(b.synapse): part_name(names, b, b.synapse) for b in blocks(model)}
    param = next(model.parameters())
    zeros = torch.zeros(1, 1, *sample_shape, device=param.device, dtype=param.dtype)

    def run():
        with running_on(model, MULTISTEP):
            run_steps(model, model.layers, zeros, MULTISTEP)
    return _macs(model, synapses, run)


def twin_macs(ann, sample_shape) -> list:
    """MACs per layer of a non-spiking network (the ANN twin) for one input of `sample_shape`
    ((C, H, W), without the batch): [{"layer", "kind", "macs"}, ...] for every conv and linear
    layer, in the order its forward pass runs them (the readout last)."""
    names = {id(m): name for name, m in ann.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    param = next(ann.parameters())
    return _macs(ann, names, lambda: ann(torch.zeros(1, *sample_shape, device=param.device,
                                                     dtype=param.dtype)))


def _is_spikes(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x.abs() == 1)).all())


class Counter(Multistep):
    """The multistep backend, counting as it runs: over batches, the spikes of every block at
    every step, and the synaptic operations of every block at every step (in total, and per
    sample split into ACs and MACs, for the per-sample exit). Blocks are listed in the order
    the network runs them; each block's input is traced to the block that made it."""

    def __init__(self, model, steps: int):
        self.steps = steps
        self.names = _module_names(model)
        self.blocks = []  # in the order they run
        self.input_spikes = torch.zeros(steps, dtype=torch.long)
        self.input_neurons = 0
        self.spikes, self.neurons, self.ops, self.sources = {}, {}, {}, {}
        self.mac_layers = set()  # blocks whose inputs were real-valued, so MACs
        self.sample_ac, self.sample_mac = [], []  # [T, B] per batch
        self._ac = self._mac = None  # those of the batch under way
        self.sample_shape = None
        self._reach = {}
        self._made_by = {}  # id of a block's output -> the block, in the batch under way

    def start_batch(self, encoded: torch.Tensor) -> None:
        if self.sample_shape is None:
            self.sample_shape = tuple(encoded.shape[2:])
        self.input_spikes += torch.count_nonzero(encoded.flatten(2), dim=2).sum(1).cpu()
        self.input_neurons = encoded[0, 0].numel()
        self._made_by = {id(encoded): "input"}
        self._keep = [encoded]  # ids stay unique while the tensors live
        batch = encoded.shape[1]
        self._ac = torch.zeros(self.steps, batch, dtype=torch.long)
        self._mac = torch.zeros(self.steps, batch, dtype=torch.long)

    def end_batch(self) -> None:
        self.sample_ac.append(self._ac)
        self.sample_mac.append(self._mac)
        self._made_by, self._keep = {}, []

    def run(self, block, x, u0, first_step: int, residual=None):
        s, u = self.fire(block, x, u0, first_step, residual)
        out = block.pool_stack(s)
        self._count(block, x, s if block.neuron is not None else None)
        self._made_by[id(out)] = block
        self._keep.append(out)
        return out, u

    def _count(self, block, inputs: torch.Tensor, spikes: torch.Tensor | None) -> None:
        if block not in self.ops:
            self.blocks.append(block)
            self.ops[block] = torch.zeros(self.steps, dtype=torch.long)
            source = self._made_by.get(id(inputs))
            self.sources[block] = source
            if spikes is not None:
                self.spikes[block] = torch.zeros(self.steps, dtype=torch.long)
        synapse = block.synapse
        inputs = block.synapse_input(inputs, leading=2)
        reach = None
        if isinstance(synapse, nn.Conv2d):
            key = (block, *inputs.shape[-2:])
            if key not in self._reach:
                self._reach[key] = conv_reach(synapse, *inputs.shape[-2:]).to(inputs.device)
            reach = self._reach[key]
        ops = synaptic_ops(synapse, inputs, reach).cpu()
        self.ops[block] += ops.sum(1)
        # Only the encoded input can be real-valued; the blocks' inputs are spikes, pooled
        # spikes or sums of them, which are accumulates by convention (CONVENTIONS).
        if self.sources[block] == "input" and not _is_spikes(inputs):
            self.mac_layers.add(block)
            self._mac += ops
        else:
            self._ac += ops
        if spikes is not None:
            self.spikes[block] += torch.count_nonzero(spikes.flatten(2), dim=2).sum(1).cpu()
            self.neurons[block] = spikes[0, 0].numel()

    def spiking_blocks(self) -> list:
        return [b for b in self.blocks if b in self.spikes]

    def source_name(self, block) -> str:
        """Where a block's input comes from: the input, a block's spikes (pooled), or a sum."""
        source = self.sources[block]
        if source == "input":
            return "input"
        if source is None:
            return "computed from spikes"
        return block_name(self.names, source) + (" pooled" if source.pool is not None else "")


@dataclass
class Activity:
    """What one pass over the test set counted, and how well it predicted at every step.

        activity = activity_pass(model, loader, torch.device("cpu"), eval_seed=0)
        report = build_report(model, activity, E_AC_45NM, E_MAC_45NM, DEFAULT_CONFIDENCES)
    """
    counter: Counter  # spikes and operations
    scores: early_exit.PrefixScores  # the prediction after every prefix of steps


def activity_pass(model, loader, device, eval_seed: int = 0) -> Activity:
    """Run the test set through `model` (multistep engine) with fixed Poisson draws, counting
    spikes and operations, and the prediction after every prefix of steps."""
    counter = Counter(model, model.num_steps)
    scores = early_exit.PrefixScores(model.num_steps)

    def counted(encoded: torch.Tensor) -> torch.Tensor:
        counter.start_batch(encoded)
        with running_on(model, counter):
            currents = run_steps(model, model.layers, encoded, counter)
        counter.end_batch()
        return currents

    for logits, labels in prefix_logits_pass(model, loader, device, eval_seed, desc="activity",
                                             readout=counted):
        scores.add(logits, labels)
    return Activity(counter, scores)


@dataclass
class AnnScore:
    top1_count: int
    images: int
    sample_shape: tuple  # one input without the batch, (C, H, W)


@torch.no_grad()
def ann_pass(model, loader, device) -> AnnScore:
    """The ANN twin's top-1 on the test set, in one pass (it has no steps to count along)."""
    model.eval()
    hits, images, shape = 0, 0, None
    for inputs, labels in tqdm(loader, desc="activity", leave=False, dynamic_ncols=True):
        inputs, labels = inputs.to(device), labels.to(device)
        # the class utill.correct_topk picks, as train.py scores
        hits += int((model(inputs).topk(1, 1).indices[:, 0] == labels).sum())
        images += labels.shape[0]
        shape = tuple(inputs.shape[1:])
    if not images:
        raise UsageError("the test set is empty")
    return AnnScore(hits, images, shape)


# -- the report -------------------------------------------------------------------------------

def build_report(model, activity: Activity, e_ac: float, e_mac: float, confidences,
                 alpha: float = early_exit.EXIT_THRESHOLD) -> dict:
    counter, scores, steps = activity.counter, activity.scores, model.num_steps
    n = scores.images
    spiking = counter.spiking_blocks()
    rate_names = ["input"] + [block_name(counter.names, b) for b in spiking]
    rates = []
    for name, spikes, neurons in zip(rate_names, [counter.input_spikes] + [counter.spikes[b] for b in spiking],
                                     [counter.input_neurons] + [counter.neurons[b] for b in spiking]):
        per_step = (spikes.double() / (n * neurons)).tolist()
        rates.append({"layer": name, "neurons": neurons, "per_step": per_step,
                      "mean_rate": sum(per_step) / steps,  # spikes per neuron per step
                      "spikes_per_neuron": sum(per_step)})  # per image, over all T steps
    hidden = rates[1:]
    total_neurons = sum(r["neurons"] for r in hidden)
    total_spikes = sum(int(s.sum()) for s in counter.spikes.values()) / n
    network = {"neurons": total_neurons, "spikes_per_image": total_spikes,
               "mean_rate": total_spikes / (total_neurons * steps)}

    # An ANN reads a sequence one slice per pass, so it needs as many passes as the SNN steps.
    passes = steps if isinstance(model.encoder, SequenceEncoder) else 1
    ann = ann_macs(model, counter.sample_shape)
    layers, snn_pj, ann_pj = [], 0.0, 0.0
    for row, block in zip(ann, counter.blocks):
        ops = counter.ops[block]
        op = "MAC" if block in counter.mac_layers else "AC"
        per_image = int(ops.sum()) / n
        e_snn = per_image * (e_mac if op == "MAC" else e_ac)
        macs = row["macs"] * passes
        e_ann = macs * e_mac
        layers.append({"layer": row["layer"], "kind": row["kind"], "inputs_from": counter.source_name(block),
                       "snn_op": op, "snn_ops_per_image": per_image,
                       "snn_ops_per_step": (ops.double() / n).tolist(),
                       "ann_macs_per_image": macs, "snn_energy_pj": e_snn, "ann_energy_pj": e_ann,
                       "ann_over_snn": e_ann / e_snn if e_snn else math.inf})
        snn_pj, ann_pj = snn_pj + e_snn, ann_pj + e_ann
    total = {"snn_ac_per_image": sum(l["snn_ops_per_image"] for l in layers if l["snn_op"] == "AC"),
             "snn_mac_per_image": sum(l["snn_ops_per_image"] for l in layers if l["snn_op"] == "MAC"),
             "ann_macs_per_image": sum(l["ann_macs_per_image"] for l in layers),
             "snn_energy_pj": snn_pj, "ann_energy_pj": ann_pj,
             "snn_energy_uj": snn_pj * 1e-6, "ann_energy_uj": ann_pj * 1e-6,
             "ann_over_snn": ann_pj / snn_pj if snn_pj else math.inf}

    # Energy per sample and step, in pJ, then the energy of running the first t steps.
    per_sample = (torch.cat(counter.sample_ac, 1).double() * e_ac
                  + torch.cat(counter.sample_mac, 1).double() * e_mac)  # [T, N]
    cumulative = per_sample.cumsum(0)
    acc = (100.0 * scores.top1.double() / n).tolist()
    step_ops = torch.stack(list(counter.ops.values())).sum(0).cumsum(0)
    time = [{"t": t + 1, "top1": acc[t], "snn_ops_per_image": step_ops[t].item() / n,
             "snn_energy_uj": cumulative[t].mean().item() * 1e-6,
             "fraction_of_full": cumulative[t].mean().item() / snn_pj if snn_pj else 0.0,
             "ann_over_snn": ann_pj / cumulative[t].mean().item() if cumulative[t].any() else math.inf}
            for t in range(steps)]
    sample_exit = []
    for c in confidences:
        stop, hit = early_exit.sample_exits(scores.margins, scores.correct, c)
        energy = cumulative.gather(0, stop.view(1, -1)).mean().item()
        sample_exit.append({"threshold": c, "top1": 100.0 * hit.double().mean().item(),
                            "mean_steps": (stop + 1).double().mean().item(),
                            "snn_energy_uj": energy * 1e-6,
                            "ann_over_snn": ann_pj / energy if energy else math.inf})
    gamma_exit = early_exit.gamma_exit(early_exit.gamma_statistics(model), acc, model.norm, alpha)
    at_exit = time[gamma_exit["exit_step"] - 1]["snn_energy_uj"]
    gamma_exit.update({"snn_energy_uj_at_exit": at_exit, "snn_energy_uj_full": time[-1]["snn_energy_uj"],
                       "energy_saved_fraction": 1 - at_exit / time[-1]["snn_energy_uj"]
                       if time[-1]["snn_energy_uj"] else 0.0})
    return {
        "kind": "snn", "norm": model.norm,
        "num_steps": steps, "test_images": n, "engine": "multistep",
        "e_ac_pj": e_ac, "e_mac_pj": e_mac,
        "technology": ("45 nm, Horowitz 2014, as in the paper"
                       if (e_ac, e_mac) == (E_AC_45NM, E_MAC_45NM) else "given with --e_ac / --e_mac"),
        "ann_passes": passes,
        "conventions": conventions(model.norm),
        "rates": {"layers": rates, "network": network},
        "energy": {"layers": layers, "total": total},
        "time": time,
        "sample_exit": sample_exit,
        "gamma_exit": gamma_exit,
    }


def build_ann_report(model, score: AnnScore, e_mac: float) -> dict:
    """The ANN twin's side of the energy comparison: its MACs per layer and in total for one
    image, their energy at `e_mac` pJ each, and its top-1."""
    layers = [{"layer": r["layer"], "kind": r["kind"], "ann_macs_per_image": r["macs"],
               "ann_energy_pj": r["macs"] * e_mac}
              for r in twin_macs(model, score.sample_shape)]
    macs = sum(r["ann_macs_per_image"] for r in layers)
    return {
        "kind": "ann", "num_steps": None, "test_images": score.images,
        "top1": 100.0 * score.top1_count / score.images,
        "e_mac_pj": e_mac,
        "technology": "45 nm, Horowitz 2014, as in the paper" if e_mac == E_MAC_45NM else "given with --e_mac",
        "note": ANN_NOTE,
        "conventions": {"ann_counted": CONVENTIONS["ann_counted"][:1]},
        "energy": {"layers": layers, "total": {"ann_macs_per_image": macs, "ann_energy_pj": macs * e_mac,
                                               "ann_energy_uj": macs * e_mac * 1e-6}},
    }


# the normalisation in the printed "not counted" line
NOT_COUNTED_SHORT = {"bntt": "BNTT (folds into a per-step scale and offset per neuron)",
                     "bn": "the shared BatchNorm (folds into a scale and offset per neuron)",
                     "tdbn": "tdBN (folds into a scale and offset per neuron)",
                     "tebn": "TEBN (folds into a per-step scale and offset per neuron)",
                     "tab": "TAB (folds into a per-step scale and offset per neuron)",
                     "mpbn": "MPBN (folds into a scale and offset per neuron and a threshold "
                             "per channel)",
                     "none": ""}


def _ratio(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.2f}x"


def print_report(report: dict) -> None:
    steps, rates = report["num_steps"], report["rates"]
    shown = list(range(steps)) if steps <= 8 else sorted({0, 1, 2, steps // 2, steps - 2, steps - 1})
    print(f"\nspike rate (spikes per neuron per step; input: non-zero inputs per element) "
          f"on {report['test_images']} test images")
    print(f"{'layer':>10} {'neurons':>9} " + " ".join(f"{'t=' + str(t + 1):>7}" for t in shown)
          + f" {'mean':>7} {'per T':>7}")
    for r in rates["layers"]:
        print(f"{r['layer']:>10} {r['neurons']:>9} " + " ".join(f"{r['per_step'][t]:>7.4f}" for t in shown)
              + f" {r['mean_rate']:>7.4f} {r['spikes_per_neuron']:>7.3f}")
    net = rates["network"]
    print(f"network: {net['spikes_per_image']:.1f} spikes per image over {steps} steps in "
          f"{net['neurons']} neurons, {net['mean_rate']:.4f} per neuron per step")

    energy = report["energy"]
    print(f"\nenergy per image: SNN E_AC = {report['e_ac_pj']:g} pJ, ANN E_MAC = {report['e_mac_pj']:g} pJ "
          f"({report['technology']})")
    print(f"{'layer':>6} {'inputs from':>16} {'op':>3} {'SNN ops':>12} {'ANN MACs':>12} "
          f"{'SNN uJ':>10} {'ANN uJ':>10} {'ANN/SNN':>9}")
    for r in energy["layers"]:
        print(f"{r['layer']:>6} {r['inputs_from']:>16} {r['snn_op']:>3} {r['snn_ops_per_image']:>12.4g} "
              f"{r['ann_macs_per_image']:>12.4g} {r['snn_energy_pj'] * 1e-6:>10.4g} "
              f"{r['ann_energy_pj'] * 1e-6:>10.4g} {_ratio(r['ann_over_snn']):>9}")
    tot = energy["total"]
    print(f"{'total':>6} {'':>16} {'':>3} {tot['snn_ac_per_image'] + tot['snn_mac_per_image']:>12.4g} "
          f"{tot['ann_macs_per_image']:>12.4g} {tot['snn_energy_uj']:>10.4g} {tot['ann_energy_uj']:>10.4g} "
          f"{_ratio(tot['ann_over_snn']):>9}")
    print("counted: one operation per output reached by each non-zero input, input layer and readout "
          "included; pooled spikes count one AC per output reached per non-zero pooled value")
    norm = NOT_COUNTED_SHORT[report["norm"]]
    print(f"not counted: {norm + ', ' if norm else ''}neuron updates "
          "(leak, compare, reset), memory; the ANN counts only its MACs (its BatchNorm folds into the weights)"
          + (f"; the ANN runs {report['ann_passes']} passes, one per sequence slice"
             if report["ann_passes"] > 1 else ""))

    print("\naccuracy and SNN energy of running the first t steps")
    print(f"{'t':>4} {'top-1':>7} {'uJ/image':>10} {'of full':>8} {'ANN/SNN':>9}")
    for r in report["time"]:
        print(f"{r['t']:>4} {r['top1']:>7.2f} {r['snn_energy_uj']:>10.4g} {r['fraction_of_full']:>8.1%} "
              f"{_ratio(r['ann_over_snn']):>9}")
    ge = report["gamma_exit"]
    if not ge["applicable"]:
        print(f"\ngamma exit: {ge['note']}")
    elif ge["triggered"]:
        print(f"\ngamma exit (alpha {ge['alpha']:g}): fires at step {ge['exit_step']} of {steps}: "
              f"{ge['top1_at_exit']:.2f}% (all steps {ge['top1_full']:.2f}%), "
              f"{ge['snn_energy_uj_at_exit']:.4g} uJ per image, {ge['energy_saved_fraction']:.1%} saved")
    else:
        print(f"\ngamma exit (alpha {ge['alpha']:g}): does not fire; all {steps} steps run, nothing saved")
    print("\nper-sample exit (softmax margin >= threshold)")
    print(f"{'threshold':>9} {'top-1':>7} {'mean steps':>10} {'uJ/image':>10} {'ANN/SNN':>9}")
    for r in report["sample_exit"]:
        print(f"{r['threshold']:>9g} {r['top1']:>7.2f} {r['mean_steps']:>10.2f} {r['snn_energy_uj']:>10.4g} "
              f"{_ratio(r['ann_over_snn']):>9}")


def print_ann_report(report: dict) -> None:
    print(f"\nANN {report['arch']}: top-1 {report['top1']:.2f}% on {report['test_images']} test "
          f"images; no time steps and no spikes: its energy is its MACs in one pass")
    print(f"energy per image: E_MAC = {report['e_mac_pj']:g} pJ ({report['technology']})")
    print(f"{'layer':>6} {'kind':>6} {'ANN MACs':>12} {'ANN uJ':>10}")
    for r in report["energy"]["layers"]:
        print(f"{r['layer']:>6} {r['kind']:>6} {r['ann_macs_per_image']:>12.4g} "
              f"{r['ann_energy_pj'] * 1e-6:>10.4g}")
    tot = report["energy"]["total"]
    print(f"{'total':>6} {'':>6} {tot['ann_macs_per_image']:>12.4g} {tot['ann_energy_uj']:>10.4g}")
    print("counted: C_in / groups * k_h * k_w * C_out * H_out * W_out MACs per conv, in * out per linear "
          "layer, readout included; not counted: its BatchNorms (they fold into the weights), ReLUs, "
          "pools, memory")


def csv_tables(report: dict) -> dict:
    steps = report["num_steps"]
    rates = [{"layer": r["layer"], "neurons": r["neurons"],
              **{f"t{t + 1}": r["per_step"][t] for t in range(steps)},
              "mean_rate": r["mean_rate"], "spikes_per_neuron": r["spikes_per_neuron"]}
             for r in report["rates"]["layers"]]
    columns = ("layer", "kind", "inputs_from", "snn_op", "snn_ops_per_image", "ann_macs_per_image",
               "snn_energy_pj", "ann_energy_pj", "ann_over_snn")
    layers = [{k: r[k] for k in columns} for r in report["energy"]["layers"]]
    tot = report["energy"]["total"]
    layers.append({"layer": "total", "kind": "", "inputs_from": "", "snn_op": "",
                   "snn_ops_per_image": tot["snn_ac_per_image"] + tot["snn_mac_per_image"],
                   "ann_macs_per_image": tot["ann_macs_per_image"], "snn_energy_pj": tot["snn_energy_pj"],
                   "ann_energy_pj": tot["ann_energy_pj"], "ann_over_snn": tot["ann_over_snn"]})
    return {"rates.csv": rates, "energy_layers.csv": layers, "energy_time.csv": report["time"]}


def ann_csv_tables(report: dict) -> dict:
    tot = report["energy"]["total"]
    rows = report["energy"]["layers"] + [{"layer": "total", "kind": "",
                                          "ann_macs_per_image": tot["ann_macs_per_image"],
                                          "ann_energy_pj": tot["ann_energy_pj"]}]
    return {"energy_layers.csv": rows}


def add_outputs(report: dict, out: Report) -> None:
    """The report's files (a JSON null for a ratio to no energy), events and figures, to be
    written by out.write()."""
    ann = report["kind"] == "ann"
    out.json("activity.json", report)
    for name, rows in (ann_csv_tables(report) if ann else csv_tables(report)).items():
        out.csv(name, rows)
    events = out.events
    events.text("activity/conventions", json.dumps(report["conventions"]))
    if ann:  # nothing along time or layers of neurons: its top-1 and its energy
        events.scalar("activity/top1", report["top1"], 0)
        events.scalar("activity/ann_energy_uj", report["energy"]["total"]["ann_energy_uj"], 0)
        return
    for r in report["rates"]["layers"]:
        for t, rate in enumerate(r["per_step"], 1):
            events.scalar(f"activity/rate/{r['layer']}", rate, t)
    for r in report["time"]:
        events.scalar("activity/top1_after_t_steps", r["top1"], r["t"])
        events.scalar("activity/snn_energy_uj_after_t_steps", r["snn_energy_uj"], r["t"])
    tot = report["energy"]["total"]
    for key in ("snn_energy_uj", "ann_energy_uj", "ann_over_snn"):
        if math.isfinite(tot[key]):
            events.scalar(f"activity/{key}", tot[key], 0)
    plot(report, out)


def plot(report: dict, out: Report) -> None:
    plt = out.pyplot()
    if plt is None:
        return

    layers = report["rates"]["layers"]
    steps = report["num_steps"]
    grid = [r["per_step"] for r in layers]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.3 * steps + 3), 0.4 * len(layers) + 2))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest",
                      extent=(0.5, steps + 0.5, len(layers) - 0.5, -0.5))
    ax.set_yticks(range(len(layers)), [r["layer"] for r in layers])
    ax.set(xlabel="time step t", title="spikes per neuron per step")
    fig.colorbar(image, ax=ax, label="spike rate")
    fig.tight_layout()
    out.figure("rates.png", fig)

    tot = report["energy"]["total"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([r["snn_energy_uj"] for r in report["time"]], [r["top1"] for r in report["time"]],
            marker="o", markersize=3, label="all samples stop after t steps")
    ax.plot([r["snn_energy_uj"] for r in report["sample_exit"]], [r["top1"] for r in report["sample_exit"]],
            marker="s", markersize=3, linestyle="--", label="per-sample exit (softmax margin)")
    full = report["time"][-1]
    ax.plot([full["snn_energy_uj"]], [full["top1"]], marker="*", markersize=14, color="r", linestyle="",
            label=f"SNN, all {steps} steps: {full['snn_energy_uj']:.3g} uJ")
    ge = report["gamma_exit"]
    if ge["triggered"]:
        ax.plot([ge["snn_energy_uj_at_exit"]], [ge["top1_at_exit"]], marker="D", markersize=8, color="m",
                linestyle="", label=f"gamma exit (alpha {ge['alpha']:g}) at t = {ge['exit_step']}")
    ax.axvline(tot["ann_energy_uj"], color="k", linestyle=":",
               label=f"ANN (same architecture): {tot['ann_energy_uj']:.3g} uJ")
    # The SNN's points sit orders of magnitude below the ANN's line: a log axis shows both.
    energies = [r["snn_energy_uj"] for r in report["time"] + report["sample_exit"]] + [tot["ann_energy_uj"]]
    log = min(energies) > 0
    ax.set_xscale("log" if log else "linear")
    low, high = ax.get_ylim()
    if high - low < 2:  # a flat curve (an untrained net): no axis spanning float rounding
        ax.set_ylim((low + high) / 2 - 1, (low + high) / 2 + 1)
    ax.yaxis.get_major_formatter().set_useOffset(False)
    ax.set(xlabel="energy per image (uJ" + (", log scale)" if log else ")"), ylabel="test top-1 (%)",
           title=f"accuracy vs energy (E_AC {report['e_ac_pj']:g} pJ, E_MAC {report['e_mac_pj']:g} pJ)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.figure("energy.png", fig)


# -- command line -----------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="a .pt file, or a run folder (its last.pt)")
    p.add_argument("--dataset", choices=list(DATASETS), help="default: the checkpoint's")
    p.add_argument("--leak_mem", type=float, help="default: the checkpoint's")
    p.add_argument("--data_dir", default=None, help="default: the checkpoint's, else ./data")
    p.add_argument("--test_samples", type=int, default=0, help="only the first N test images")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--eval_seed", type=int, default=0, help="seed of the Poisson draws (default: 0)")
    p.add_argument("--device", default="auto")
    p.add_argument("--e_ac", type=float, default=E_AC_45NM,
                   help=f"energy of an accumulate in pJ (default: {E_AC_45NM}, 45 nm, Horowitz 2014)")
    p.add_argument("--e_mac", type=float, default=E_MAC_45NM,
                   help=f"energy of a multiply-accumulate in pJ (default: {E_MAC_45NM}, 45 nm)")
    p.add_argument("--confidence", type=float, nargs="+", default=list(DEFAULT_CONFIDENCES),
                   help="softmax-margin thresholds of the per-sample exit")
    p.add_argument("--exit_threshold", type=float, default=early_exit.EXIT_THRESHOLD,
                   help="alpha of the gamma rule, whose exit step and energy the report gives "
                        f"(default: {early_exit.EXIT_THRESHOLD})")
    p.add_argument("--out_dir", default=None, help="default: <checkpoint folder>/activity")
    p.add_argument("--no_plots", action="store_true", help="skip the PNG figures")


def _check(args) -> None:
    require_positive([(args.e_ac, "--e_ac"), (args.e_mac, "--e_mac"), (args.exit_threshold, "--exit_threshold")]
                     + [(c, "--confidence") for c in args.confidence])
    check_scoring_flags(args)


def run(args) -> int:
    _check(args)
    source, out, device, trained = open_checkpoint(args, "activity")
    model = trained.model.to(device)
    loader = test_loader(trained, args.data_dir, args.batch_size, args.test_samples,
                         pin_memory=device.type == "cuda")

    if not trained.spiking:
        report = build_ann_report(model, ann_pass(model, loader, device), args.e_mac)
    else:
        activity = activity_pass(model, loader, device, args.eval_seed)
        report = build_report(model, activity, args.e_ac, args.e_mac, args.confidence,
                              args.exit_threshold)
        report.update({"eval_seed": args.eval_seed, "leak_mem": model.leak_mem})
    report.update({"checkpoint": str(source), "dataset": trained.dataset, "arch": trained.arch,
                   "batch_size": args.batch_size})
    (print_ann_report if not trained.spiking else print_report)(report)
    add_outputs(report, out)
    out.write()
    return 0
