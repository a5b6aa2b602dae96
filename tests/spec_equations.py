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
