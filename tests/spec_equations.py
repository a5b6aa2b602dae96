"""The equations of docs/spec.md written out plainly, for the tests only.

Nothing here imports the project's code: it works on a state_dict in the authors' key layout
(conv{i}.weight, bntt{i}.{t}.weight/running_mean/running_var, fc1.weight, bntt_fc.{t}.*,
fc2.weight), so it checks the models, the BNTT storage and the state_dict mapping at once.
The surrogate gradient is obtained differently from the library (a straight-through primitive
whose derivative is the triangle), so a wrong surrogate cannot agree by construction.
"""
import torch
import torch.nn.functional as F

EPS, MOMENTUM, THETA, SURROGATE = 1e-4, 0.1, 1.0, 0.3

# (conv name, pool after its neuron): None, "avg" (2x2 average) or "global" (global average).
VGG9_LAYERS = [("conv1", None), ("conv2", "avg"), ("conv3", None), ("conv4", "avg"),
               ("conv5", None), ("conv6", None), ("conv7", "avg")]
VGG11_LAYERS = [("conv1", "avg"), ("conv2", "avg"), ("conv3", None), ("conv4", "avg"),
                ("conv5", None), ("conv6", "avg"), ("conv7", None), ("conv8", "global")]


def spike(v):
    """Forward: 1 where v > THETA. Backward: SURROGATE * max(0, 1 - |v/THETA - 1|) / THETA."""
    x = (v / THETA - 1.0).clamp(-1.0, 1.0)
    primitive = SURROGATE * (x + 0.5 - x * x.abs() / 2.0)  # d/dx = SURROGATE * (1 - |x|)
    return (v > THETA).to(v.dtype) + primitive - primitive.detach()


def input_spikes(images, steps):
    """Deterministic case of the Poisson coder: |x| >= 2 always fires (with sign(x)), 0 never."""
    assert bool(((images.abs() >= 2) | (images == 0)).all())
    return torch.stack([torch.sign(images) * (images.abs() >= 2)] * steps)


def batch_norm_step(z, p, name, t, training, new_stats):
    shape = (1, -1) + (1,) * (z.dim() - 2)
    dims = [0] + list(range(2, z.dim()))
    gamma = p[f"{name}.{t}.weight"].view(shape)
    if training:
        mean = z.mean(dims)
        var = z.var(dims, unbiased=False)
        n = z.numel() // z.shape[1]
        new_stats[f"{name}.{t}.running_mean"] = ((1 - MOMENTUM) * p[f"{name}.{t}.running_mean"]
                                                 + MOMENTUM * mean.detach())
        new_stats[f"{name}.{t}.running_var"] = ((1 - MOMENTUM) * p[f"{name}.{t}.running_var"]
                                                + MOMENTUM * var.detach() * n / (n - 1))
    else:
        mean, var = p[f"{name}.{t}.running_mean"], p[f"{name}.{t}.running_var"]
    return gamma * (z - mean.view(shape)) / torch.sqrt(var.view(shape) + EPS)


def neurons(leak):
    """lif(name, current) -> spikes: LIF neurons (Eq. 5-7), each name with its own membrane,
    from rest."""
    membrane = {}

    def lif(name, current):
        u = membrane.get(name, torch.zeros_like(current))
        v = leak * u + current
        s = spike(v)
        membrane[name] = v - THETA * s.detach()
        return s
    return lif


def spec_logits(p, layers, spikes, leak, training):
    """Logits [B, classes] and the updated running statistics, from a state_dict `p`."""
    steps = spikes.shape[0]
    lif, new_stats, total = neurons(leak), {}, 0.0

    for t in range(steps):
        x = spikes[t]
        for conv, pool in layers:
            z = F.conv2d(x, p[f"{conv}.weight"], stride=1, padding=1)
            x = lif(conv, batch_norm_step(z, p, "bntt" + conv[4:], t, training, new_stats))
            if pool == "avg":
                x = F.avg_pool2d(x, 2)
            elif pool == "global":
                x = x.mean(dim=(2, 3), keepdim=True)
        z = x.flatten(1) @ p["fc1.weight"].t()
        s = lif("fc1", batch_norm_step(z, p, "bntt_fc", t, training, new_stats))
        total = total + s @ p["fc2.weight"].t()
    return total / steps, new_stats


# ResNet-19 (tdBN's): (stage, blocks, stride of the first block) and the state_dict names
# conv1.synapse/norm, layer{i}.{j}.conv1|conv2|shortcut.synapse/norm, fc1.synapse/norm, fc2.synapse
RESNET19_STAGES = [(1, 3, 1), (2, 3, 2), (3, 2, 2)]


def spec_resnet19_logits(p, spikes, leak, training):
    """ResNet-19's logits [B, classes] and updated running statistics, from a state_dict `p`:
    per step, every residual block computes
        s1 = LIF(BNTT(conv3x3_stride(x)));  s = LIF(BNTT(conv3x3(s1)) + shortcut),
    with shortcut = x, or BNTT(conv1x1_stride(x)) where the shape changes; the last block's
    spikes are averaged over the map, then LIF(BNTT(fc1)) and the readout fc2."""
    steps = spikes.shape[0]
    lif, new_stats, total = neurons(leak), {}, 0.0

    def conv_bn(name, x, t, stride, padding):
        z = F.conv2d(x, p[f"{name}.synapse.weight"], stride=stride, padding=padding)
        return batch_norm_step(z, p, f"{name}.norm", t, training, new_stats)

    for t in range(steps):
        x = lif("conv1", conv_bn("conv1", spikes[t], t, 1, 1))
        for stage, count, first_stride in RESNET19_STAGES:
            for j in range(count):
                name, stride = f"layer{stage}.{j}", first_stride if j == 0 else 1
                s1 = lif(f"{name}.conv1", conv_bn(f"{name}.conv1", x, t, stride, 1))
                if f"{name}.shortcut.synapse.weight" in p:
                    shortcut = conv_bn(f"{name}.shortcut", x, t, stride, 0)
                else:
                    shortcut = x
                x = lif(f"{name}.conv2", conv_bn(f"{name}.conv2", s1, t, 1, 1) + shortcut)
        x = x.mean(dim=(2, 3))
        z = x @ p["fc1.synapse.weight"].t()
        s = lif("fc1", batch_norm_step(z, p, "fc1.norm", t, training, new_stats))
        total = total + s @ p["fc2.synapse.weight"].t()
    return total / steps, new_stats


# -- the normalisations after BNTT (docs/spec.md, "The normalisations after BNTT") ----------
# Each works on a stack a [T, B, C, ...] of one layer's synaptic currents and a state_dict `p`
# holding the layer's tensors under `name` (name.weight, name.bias, name.scale,
# name.running_mean, ...); in training the updated running statistics go into `new_stats`.

def _running(p, name, key, batch_value, n, new_stats):
    """Eq. 4 for one set of running statistics: (mean, biased variance) of a batch of n values."""
    mean, var = batch_value
    new_stats[f"{name}.running_mean"] = (1 - MOMENTUM) * p[f"{key}.running_mean"] + MOMENTUM * mean.detach()
    new_stats[f"{name}.running_var"] = ((1 - MOMENTUM) * p[f"{key}.running_var"]
                                        + MOMENTUM * var.detach() * n / (n - 1))


def bn_over_steps(a, p, name, training, new_stats):
    """Eq. T1 (and MPBN's first BatchNorm, Eq. M1): gamma * x_hat + beta, x_hat with one mean and
    variance per channel over time, batch and space together."""
    shape = (1, 1, -1) + (1,) * (a.dim() - 3)
    dims = [0, 1] + list(range(3, a.dim()))
    if training:
        mean, var = a.mean(dims), a.var(dims, unbiased=False)
        _running(p, name, name, (mean, var), a.numel() // a.shape[2], new_stats)
    else:
        mean, var = p[f"{name}.running_mean"], p[f"{name}.running_var"]
    x_hat = (a - mean.view(shape)) / torch.sqrt(var.view(shape) + EPS)
    return p[f"{name}.weight"].view(shape) * x_hat + p[f"{name}.bias"].view(shape)


def tebn(a, p, name, training, new_stats):
    """Eq. T2: TEBN's step t is p_t times the BatchNorm over all steps."""
    y = bn_over_steps(a, p, name, training, new_stats)
    return torch.stack([p[f"{name}.scale"][t] * y[t] for t in range(a.shape[0])])


def tab(a, p, name, training, new_stats):
    """Eq. A1-A3: TAB's step t, normalised with the mean and variance of steps 1..t of the
    batch together (its own running statistics in evaluation), then gamma_t, beta_t and p_t^2;
    written as the authors run it: one BatchNorm per step over the window of steps 1..t, of
    whose output only step t is kept."""
    shape = (1, -1) + (1,) * (a.dim() - 3)
    dims = [0, 1] + list(range(3, a.dim()))
    out, means, variances = [], [], []
    for t in range(a.shape[0]):
        window = a[:t + 1]
        if training:
            mean, var = window.mean(dims), window.var(dims, unbiased=False)
            n = window.numel() // a.shape[2]
            means.append((1 - MOMENTUM) * p[f"{name}.running_mean"][t] + MOMENTUM * mean.detach())
            variances.append((1 - MOMENTUM) * p[f"{name}.running_var"][t]
                             + MOMENTUM * var.detach() * n / (n - 1))
        else:
            mean, var = p[f"{name}.running_mean"][t], p[f"{name}.running_var"][t]
        x_hat = (a[t] - mean.view(shape)) / torch.sqrt(var.view(shape) + EPS)
        y = p[f"{name}.weight"][t].view(shape) * x_hat + p[f"{name}.bias"][t].view(shape)
        out.append(p[f"{name}.scale"][t] ** 2 * y)
    if training:
        new_stats[f"{name}.running_mean"] = torch.stack(means)
        new_stats[f"{name}.running_var"] = torch.stack(variances)
    return torch.stack(out)


def lif_spikes(z, leak):
    """Eq. 5-7 over a stack z [T, B, ...] from rest: the spikes [T, B, ...]."""
    u, out = torch.zeros_like(z[0]), []
    for z_t in z:
        v = leak * u + z_t
        s = spike(v)
        u = v - THETA * s.detach()
        out.append(s)
    return torch.stack(out)


def mpbn_spikes(z, p, name, leak, training, new_stats):
    """Eq. M2-M3: LIF neurons fed z [T, B, C, ...] that fire where the BatchNorm of their
    membrane exceeds the threshold; the membrane itself leaks and resets. One BatchNorm
    (lambda, beta) for all steps: in training step t's batch statistics, and one running
    update per step in step order; in evaluation the running statistics."""
    key = f"{name}.membrane"
    shape = (1, -1) + (1,) * (z.dim() - 3)
    dims = [0] + list(range(2, z.dim() - 1))
    state = {f"{key}.running_mean": p[f"{key}.running_mean"], f"{key}.running_var": p[f"{key}.running_var"]}
    u, out = torch.zeros_like(z[0]), []
    for z_t in z:
        v = leak * u + z_t
        if training:
            mean, var = v.mean(dims), v.var(dims, unbiased=False)
            _running(state, key, key, (mean, var), v.numel() // v.shape[1], state)
        else:
            mean, var = state[f"{key}.running_mean"], state[f"{key}.running_var"]
        bn = (p[f"{key}.weight"].view(shape) * (v - mean.view(shape)) / torch.sqrt(var.view(shape) + EPS)
              + p[f"{key}.bias"].view(shape))
        s = spike(bn)
        u = v - THETA * s.detach()
        out.append(s)
    if training:
        new_stats.update(state)
    return torch.stack(out)


NORM_STATEMENTS = {"tebn": tebn, "tab": tab, "mpbn": bn_over_steps}


def norm_and_fire(kind, a, p, name, leak, training, new_stats):
    """A spiking layer's synaptic currents a [T, B, C, ...] -> its spikes, with norm `kind`."""
    z = NORM_STATEMENTS[kind](a, p, name, training, new_stats)
    if kind == "mpbn":
        return mpbn_spikes(z, p, name, leak, training, new_stats)
    return lif_spikes(z, leak)


def spec_norm_logits(p, layers, spikes, leak, training, kind):
    """The VGG's logits [B, classes] and updated running statistics with norm `kind` (tebn,
    tab or mpbn), from its state_dict `p` and input spikes [T, B, C, H, W], a layer at a time
    over all steps (what statistics over several steps need)."""
    new_stats = {}
    x = spikes
    for conv, pool in layers:
        a = torch.stack([F.conv2d(x_t, p[f"{conv}.weight"], stride=1, padding=1) for x_t in x])
        x = norm_and_fire(kind, a, p, "bntt" + conv[4:], leak, training, new_stats)
        if pool == "avg":
            x = torch.stack([F.avg_pool2d(x_t, 2) for x_t in x])
        elif pool == "global":
            x = x.mean(dim=(3, 4), keepdim=True)
    a = torch.stack([x_t.flatten(1) @ p["fc1.weight"].t() for x_t in x])
    s = norm_and_fire(kind, a, p, "bntt_fc", leak, training, new_stats)
    return sum(s_t @ p["fc2.weight"].t() for s_t in s) / spikes.shape[0], new_stats


def spec_fc_norm_logits(p, hidden_layers, currents, leak, training, kind):
    """The FC network's logits (fc1, bntt1, ..., fc_out) with norm `kind`, for input currents
    [T, B, features] (direct coding)."""
    new_stats, x = {}, currents
    for i in range(1, hidden_layers + 1):
        a = torch.stack([x_t @ p[f"fc{i}.weight"].t() for x_t in x])
        x = norm_and_fire(kind, a, p, f"bntt{i}", leak, training, new_stats)
    return sum(s_t @ p["fc_out.weight"].t() for s_t in x) / currents.shape[0], new_stats
