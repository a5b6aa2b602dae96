"""Check the fused BNTT + LIF kernels against the PyTorch composition LIFNeuron(BNTT(z)) at the
layer shapes of the paper's networks, and time both, layer by layer.

    python scripts/maintenance/check_fused.py                      # GPU: VGG9 T=25 batch 256 shapes
    TRITON_INTERPRET=1 python scripts/maintenance/check_fused.py --quick --device cpu

For every layer (with the 2x2 average pool after it where VGG9 has one, inside the kernels
against nn.AvgPool2d of the spikes): the fraction of neurons (pooled: windows) whose spike
train differs anywhere, and max |a - b| / max |b| of dL/dz (over the neurons whose spike
trains agree: one spike that flips on a rounding tie changes that neuron's reset and so its
gradient at every later step, which says nothing about the kernels), of dL/dgamma and of the
running statistics, in float64 (batch 64), float32 and bf16 (both sides get the same bf16 z);
then forward+backward milliseconds of each (CUDA events, median of --iters); for the pooled
layers also the fused kernels without their pool followed by the engine's separate pool
(`pool_channels_last`), which is what pooling inside the kernels replaces. Last, the whole
network: the fused engine against the reference engine in float64, where no spike sits on a
tie.
"""
import argparse
import copy
import json
import statistics
from pathlib import Path

import torch
from torch import nn

from bntt import BNTT, LIFNeuron, fused
from bntt.coding import poisson_spikes
from bntt.fused.engine import pool_channels_last, pool_size
from bntt.models import build_model

# (channels, height/width or None for the FC, k of the k x k pool after it or 1) of every
# BNTT + LIF layer of VGG9 at 32x32
_VGG9 = build_model("vgg9", num_steps=1)
VGG9_LAYERS = [(*shape, pool_size(block.pool) or 1) for shape, block
               in zip(_VGG9.neuron_shapes, _VGG9.blocks)]


def pytorch_bntt_lif(z, bn, neuron, pool=1):
    """The library's composition the kernels replace: LIF(BNTT(z)) over all steps, then the
    k x k average pool."""
    s = neuron(bn(z))
    return s if pool == 1 else nn.AvgPool2d(pool)(s.flatten(0, 1)).unflatten(0, s.shape[:2])


def fused_then_pool(z, bn, neuron, pool):
    """The fused kernels without their pool, then the engine's separate pool."""
    s = fused.bntt_lif(z, bn, neuron)
    return pool_channels_last(s.flatten(0, 1), nn.AvgPool2d(pool)).unflatten(0, s.shape[:2])


def rel(a, b):
    # in float64: a float32 cast would round both sides first and report their float32 ulps
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-300)).item()


def layer_check(channels, size, pool, steps, batch, dtype, device, iters):
    g = torch.Generator(device=device).manual_seed(channels)
    shape = (steps, batch, channels) + ((size, size) if size else ())
    z = (torch.randn(shape, device=device, generator=g) * 2 + 0.3).to(dtype)
    if size:
        z = z.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, shape[:2])
    out_shape = shape[:3] + ((size // pool, size // pool) if size else ())
    weights = torch.randn(out_shape, device=device, generator=g).to(dtype)
    layers = {"fused": lambda z, b, n: fused.bntt_lif(z, b, n, pool=pool),
              "pytorch": lambda z, b, n: pytorch_bntt_lif(z, b, n, pool)}
    if pool > 1:
        layers["fused_then_pool"] = lambda z, b, n: fused_then_pool(z, b, n, pool)
    neuron = LIFNeuron(leak=0.95)
    bn = BNTT(channels, steps).to(device, torch.float64 if dtype == torch.float64 else torch.float32)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
    out = {}
    for name in ("fused", "pytorch"):
        b = copy.deepcopy(bn)
        zz = z.clone().requires_grad_()
        s = layers[name](zz, b, neuron)
        (s * weights).float().sum().backward()
        out[name] = (s, zz.grad, b.weight.grad, b.running_mean, b.running_var)
    (s, dz, dg, rm, rv), (s0, dz0, dg0, rm0, rv0) = out["fused"], out["pytorch"]
    same_train = (s == s0).flatten(2).all(0)  # [B, neurons]: the whole spike train agrees
    keep = same_train.unflatten(1, s.shape[2:])
    if pool > 1:  # a window's spikes agree: so do the neurons it pools
        keep = keep.repeat_interleave(pool, -1).repeat_interleave(pool, -2)
    keep = keep.expand_as(dz)
    row = {"channels": channels, "size": size, "pool": pool, "dtype": str(dtype).split(".")[-1],
           "batch": batch, "neurons_differing": 1 - same_train.float().mean().item(),
           "dz": rel(dz[keep], dz0[keep]),
           "dgamma": rel(dg, dg0), "running_mean": rel(rm, rm0), "running_var": rel(rv, rv0),
           "spike_rate": s0.float().mean().item()}
    if device.type == "cuda":
        for name, layer in layers.items():
            times = []
            for _ in range(iters + 2):
                zz = z.clone().requires_grad_()
                b = copy.deepcopy(bn)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                layer(zz, b, neuron).backward(weights)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            row[f"{name}_ms"] = statistics.median(times[2:])
    return row


def model_check(device, steps, batch, dtype=torch.float64):
    torch.manual_seed(0)
    ref = build_model("vgg9", num_steps=steps, leak_mem=0.95, engine="reference").to(device, dtype)
    fast = copy.deepcopy(ref).set_engine("fused")
    g = torch.Generator(device=device).manual_seed(1)
    images = torch.randn(batch, 3, 32, 32, device=device, generator=g, dtype=dtype)
    spikes = poisson_spikes(images, steps, generator=g)
    w = torch.randn(batch, 10, device=device, generator=g, dtype=dtype)
    outs = []
    for m in (ref, fast):
        o = m.forward_spikes(spikes)
        (o * w).sum().backward()
        outs.append(o)
    grads = max(rel(a.grad, b.grad) for a, b in zip(fast.parameters(), ref.parameters()))
    return {"logits": rel(outs[1], outs[0]), "worst_parameter_grad": grads}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="T=3, batch 4 (for the interpreter)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32", "bfloat16"],
                        choices=["float64", "float32", "bfloat16"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    steps, batch = (3, 4) if args.quick else (25, 256)
    rows = []
    for dtype in (getattr(torch, name) for name in args.dtypes):
        if dtype == torch.bfloat16 and device.type != "cuda":
            continue  # the Triton interpreter has no bf16
        n = min(batch, 64) if dtype == torch.float64 else batch  # float64 autograd is large
        for channels, size, pool in VGG9_LAYERS:
            rows.append(layer_check(channels, size, pool, steps, n, dtype, device, args.iters))
    print(f"layer shapes of VGG9, T={steps}, batch {batch}, {device}")
    print(f"{'layer':<15} {'dtype':<9} {'batch':>5} {'trains≠':>8} {'dz':>9} {'dgamma':>9} "
          f"{'run.var':>9} {'fused ms':>9} {'torch ms':>9} {'fused, then pool ms':>20}")
    for r in rows:
        layer = f"{r['channels']}x{r['size']}x{r['size']}" if r["size"] else f"fc {r['channels']}"
        layer += " +pool" if r["pool"] > 1 else ""
        times = (f"{r['fused_ms']:>9.2f} {r['pytorch_ms']:>9.2f}" if "fused_ms" in r else "")
        times += f" {r['fused_then_pool_ms']:>20.2f}" if "fused_then_pool_ms" in r else ""
        print(f"{layer:<15} {r['dtype']:<9} {r['batch']:>5} {r['neurons_differing']:>8.1e} "
              f"{r['dz']:>9.1e} {r['dgamma']:>9.1e} {r['running_var']:>9.1e} {times}")
    whole = model_check(device, 4 if args.quick else 8, 4 if args.quick else 32)
    print(f"VGG9 T={4 if args.quick else 8} batch {4 if args.quick else 32}, fused vs reference "
          f"engine, float64: logits {whole['logits']:.1e}, "
          f"worst parameter gradient {whole['worst_parameter_grad']:.1e}")
    if args.json:
        args.json.write_text(json.dumps({"layers": rows, "model": whole}, indent=2) + "\n")


if __name__ == "__main__":
    main()
