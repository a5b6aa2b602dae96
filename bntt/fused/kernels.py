"""Fused BNTT-normalise + LIF over all time steps, as Triton kernels with a hand-written backward.

The multi-step engine hands one layer's pre-activations for all steps, z [T, R, C] (R = B*H*W
rows in channels-last order, C channels), to `BNTTLIF`. It computes

    y_t = gamma_t * (z_t - mean_t) / sqrt(var_t + eps)     BNTT, statistics of step t
    v_t = leak * u_{t-1} + y_t,  s_t = [v_t > threshold],  u_t = v_t - threshold * s_t

which is `LIFNeuron(BNTT(z))` of bntt/ (tests/test_fused.py checks it against that), but:

- forward: one pass for the per-(t, c) statistics (moments per tile, Chan's merge of tiles in float64, so
  the variance has no cancellation), one pass that normalises and scans the neuron over T;
- backward: nothing but z is saved. Each tile re-runs the forward scan, keeping the surrogate
  derivative of every step in a small per-program scratch slot (it stays in L1/L2), then scans
  backwards:
      g_t = dL/ds_t * surrogate(v_t) + leak * g_{t+1}        (the reset carries no gradient)
  and writes g = dL/dy together with the per-(t, c) sums the BatchNorm backward needs; a second,
  elementwise launch turns g into dL/dz in place. Each program adds into its own slot of partial
  sums, which the host adds up: no atomics, so results are deterministic.
- with a process group (DDP, `BNTT.sync_group`), the statistics and the backward's sums are
  those of the global batch: one all_reduce each way (bntt/sync.py).
- on request (`codes=True`) the forward kernel also writes the spikes as int8: what the next
  convolution keeps for its backward (bntt/fused/engine.py, `SpikeConv2d`), written while the
  spikes are in registers instead of by a cast pass over them afterwards.
- on request (`pool=k`, the k x k average pool after the layer) the forward kernel writes the
  pooled spikes (a tile holds whole windows; their codes are the window counts) and the
  backward reads the pooled gradient, 1 / k^2 of it for each spike of the window: the
  full-size spikes and their gradient are never stored, and no separate pool runs either way.

Arithmetic runs in float32 (float64 for float64 input); z, the spikes and dL/dz keep z's dtype
(bf16 under autocast). On a CPU the kernels run under the Triton interpreter
(TRITON_INTERPRET=1 set before this module is imported), which is how the tests cover them.
"""
from __future__ import annotations

import os

import torch

from bntt.bntt import update_running_statistics
from bntt.paper import SURROGATE_SCALE
from bntt.sync import all_reduce_sum, merge_moments

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only PyTorch builds ship without Triton
    triton = None

MAX_STEPS = 64  # T is a compile-time constant of the kernels; one compilation per T
MAX_POOL_WINDOW = 16  # k x k pooling windows the forward kernel sums in its tile (k = 2 or 4)
# The backward's launch shape (values per tile, resident programs per SM, warps per program):
# each program keeps a T x tile scratch of surrogate derivatives, so these trade occupancy for
# scratch that stays in L2. Chosen with scripts/tune_fused.py on an H100 (docs/fast-engine.md).
BACKWARD_TILE, PROGRAMS_PER_SM, BACKWARD_WARPS = 1024, 8, 2


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available(z: torch.Tensor) -> bool:
    """Whether the fused kernels can run on tensors like z."""
    return (triton is not None and (z.is_cuda or interpreting())
            and z.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64))


if triton is not None:

    @triton.jit
    def _lif_update(z, mean, scale, u, leak, threshold):
        """One step of BNTT-normalise + LIF for a tile; the only copy of the neuron in Triton."""
        v = leak * u + (z - mean) * scale
        fired = v > threshold
        return v, fired, tl.where(fired, v - threshold, v)

    @triton.jit
    def _surrogate(v, threshold, scale):
        return scale * tl.maximum(1.0 - tl.abs(v / threshold - 1.0), 0.0) / threshold

    @triton.jit
    def _stats_kernel(z_ptr, pmean_ptr, pm2_ptr, R, C, rows_per_split,
                      BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
        t = tl.program_id(0)
        cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        split = tl.program_id(2)
        n_split = tl.num_programs(2)
        cmask = cs < C
        r_begin = split * rows_per_split
        r_end = tl.minimum(r_begin + rows_per_split, R)
        z_step = z_ptr + t.to(tl.int64) * R * C
        # Statistics of x - shift, shift = the split's first row: no cancellation when the
        # channel's mean is large against its spread.
        shift = tl.load(z_step + r_begin.to(tl.int64) * C + cs, mask=cmask & (r_begin < R),
                        other=0.0).to(ACC)
        # A tile's moments are a tree reduction over its rows, accurate in ACC; the running
        # merge of the split's tiles (Chan's formula) is one tile after another, hundreds of
        # them on a GPU, and in float32 would lose the bits that batch_norm's statistics keep:
        # it runs in float64, a few operations per tile and channel.
        count = tl.zeros([BLOCK_C], tl.float64)
        mean = tl.zeros([BLOCK_C], tl.float64)
        m2 = tl.zeros([BLOCK_C], tl.float64)
        for r0 in range(r_begin, r_end, BLOCK_R):
            rs = r0 + tl.arange(0, BLOCK_R)
            mask = (rs < r_end)[:, None] & cmask[None, :]
            x = tl.load(z_step + rs.to(tl.int64)[:, None] * C + cs[None, :], mask=mask, other=0.0)
            x = tl.where(mask, x.to(ACC) - shift[None, :], 0.0)
            n = tl.minimum(r_end - r0, BLOCK_R).to(ACC)
            tile_mean = tl.sum(x, axis=0) / n
            d = tl.where(mask, x - tile_mean[None, :], 0.0)
            tile_m2 = tl.sum(d * d, axis=0).to(tl.float64)
            tile_mean = tile_mean.to(tl.float64)
            n = n.to(tl.float64)
            total = count + n
            delta = tile_mean - mean
            mean = mean + delta * (n / total)
            m2 = m2 + tile_m2 + delta * delta * (count * n / total)
            count = total
        out = (t * n_split + split) * C + cs
        tl.store(pmean_ptr + out, mean + shift.to(tl.float64), mask=cmask)
        tl.store(pm2_ptr + out, m2, mask=cmask)

    @triton.jit
    def _pooled_row(rs, H, W, POOL: tl.constexpr):
        """The row of the POOL x POOL average-pooled maps that row rs = (b, h, w) falls in."""
        hw = rs % (H * W)
        return ((rs // (H * W)) * (H // POOL) + (hw // W) // POOL) * (W // POOL) + (hw % W) // POOL

    @triton.jit
    def _forward_kernel(z_ptr, s_ptr, codes_ptr, mean_ptr, scale_ptr, neuron_ptr, R, C, H, W,
                        T: tl.constexpr, CODES: tl.constexpr, POOL: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
        """Spikes into s_ptr and, with CODES, the same spikes as int8 into codes_ptr. With
        POOL > 1, both are of the spikes average-pooled over POOL x POOL windows of the H x W
        maps: the spikes, the window's count divided by POOL^2 (exact); the codes, the count."""
        WINDOW: tl.constexpr = POOL * POOL
        OUT_R: tl.constexpr = BLOCK_R // WINDOW  # pooled rows per tile
        cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cs < C
        if POOL == 1:
            rs = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
            rmask = rs < R
        else:
            # tile row i is member i % WINDOW of pooled row i // WINDOW: a tile holds whole windows
            i = tl.arange(0, BLOCK_R)
            ps = tl.program_id(0) * OUT_R + i // WINDOW
            w_out = W // POOL
            pw = ps % w_out
            ph = (ps // w_out) % (H // POOL)
            b = ps // (w_out * (H // POOL))
            rs = (b * H + ph * POOL + (i % WINDOW) // POOL) * W + pw * POOL + (i % WINDOW) % POOL
            rmask = ps < R // WINDOW
            out_rs = tl.program_id(0) * OUT_R + tl.arange(0, OUT_R)
            out_mask = (out_rs < R // WINDOW)[:, None] & cmask[None, :]
            out_offs = out_rs.to(tl.int64)[:, None] * C + cs[None, :]
        mask = rmask[:, None] & cmask[None, :]
        offs = rs.to(tl.int64)[:, None] * C + cs[None, :]
        step = R.to(tl.int64) * C
        out_step = step // WINDOW
        leak, threshold = tl.load(neuron_ptr), tl.load(neuron_ptr + 1)
        u = tl.zeros([BLOCK_R, BLOCK_C], ACC)
        for t in range(T):
            z = tl.load(z_ptr + t * step + offs, mask=mask, other=0.0).to(ACC)
            mean = tl.load(mean_ptr + t * C + cs, mask=cmask, other=0.0)
            scale = tl.load(scale_ptr + t * C + cs, mask=cmask, other=0.0)
            v, fired, u = _lif_update(z, mean[None, :], scale[None, :], u, leak, threshold)
            if POOL == 1:
                tl.store(s_ptr + t * step + offs, fired.to(s_ptr.dtype.element_ty), mask=mask)
                if CODES:
                    tl.store(codes_ptr + t * step + offs, fired.to(tl.int8), mask=mask)
            else:
                count = tl.sum(tl.reshape(fired.to(tl.int32), (OUT_R, WINDOW, BLOCK_C)), axis=1)
                tl.store(s_ptr + t * out_step + out_offs,
                         (count.to(ACC) * (1.0 / WINDOW)).to(s_ptr.dtype.element_ty), mask=out_mask)
                if CODES:
                    tl.store(codes_ptr + t * out_step + out_offs, count.to(tl.int8), mask=out_mask)

    @triton.jit
    def _backward_scan_kernel(z_ptr, gs_ptr, g_ptr, mean_ptr, scale_ptr, rstd_ptr, psum_ptr,
                              scratch_ptr, neuron_ptr, R, C, H, W, rows_per_split,
                              T: tl.constexpr, TRAINING: tl.constexpr, SUMS: tl.constexpr,
                              POOL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                              ACC: tl.constexpr):
        """g = dL/dy into g_ptr (TRAINING; the BatchNorm backward follows), or dL/dz = scale * g
        (eval: the statistics are constants); with SUMS, the per-(t, c) sums of g and g * xhat
        into psum[2, T, splits, C] (this program's split). With POOL > 1, gs_ptr holds the
        gradient of the pooled spikes: each of a window's POOL^2 spikes gets 1 / POOL^2 of it."""
        cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        split = tl.program_id(1)
        n_split = tl.num_programs(1)
        cmask = cs < C
        r_begin = split * rows_per_split
        r_end = tl.minimum(r_begin + rows_per_split, R)
        step = R.to(tl.int64) * C
        leak, threshold = tl.load(neuron_ptr), tl.load(neuron_ptr + 1)
        surrogate_scale = tl.load(neuron_ptr + 2)
        # this program's slot of T tiles, for the surrogate derivatives of the forward re-run
        tile = tl.arange(0, BLOCK_R)[:, None] * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
        program = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
        scratch = scratch_ptr + program.to(tl.int64) * (T * BLOCK_R * BLOCK_C) + tile
        psum_g = psum_ptr + split * C + cs
        psum_gx = psum_g + T * n_split * C
        if SUMS:
            for t in range(T):
                tl.store(psum_g + t * n_split * C, tl.zeros([BLOCK_C], tl.float64), mask=cmask)
                tl.store(psum_gx + t * n_split * C, tl.zeros([BLOCK_C], tl.float64), mask=cmask)
        for r0 in range(r_begin, r_end, BLOCK_R):
            rs = r0 + tl.arange(0, BLOCK_R)
            mask = (rs < r_end)[:, None] & cmask[None, :]
            offs = rs.to(tl.int64)[:, None] * C + cs[None, :]
            if POOL > 1:
                gs_rows = _pooled_row(rs, H, W, POOL).to(tl.int64) * C
            # forward again, keeping the surrogate derivative of every step
            u = tl.zeros([BLOCK_R, BLOCK_C], ACC)
            for t in range(T):
                z = tl.load(z_ptr + t * step + offs, mask=mask, other=0.0).to(ACC)
                mean = tl.load(mean_ptr + t * C + cs, mask=cmask, other=0.0)
                scale = tl.load(scale_ptr + t * C + cs, mask=cmask, other=0.0)
                v, fired, u = _lif_update(z, mean[None, :], scale[None, :], u, leak, threshold)
                tl.store(scratch + t * (BLOCK_R * BLOCK_C), _surrogate(v, threshold, surrogate_scale))
            tl.debug_barrier()  # the slot and the partial sums are shared by the program's threads
            # backward in time
            carry = tl.zeros([BLOCK_R, BLOCK_C], ACC)
            for i in range(T):
                t = T - 1 - i
                if POOL == 1:
                    gs = tl.load(gs_ptr + t * step + offs, mask=mask, other=0.0).to(ACC)
                else:  # avg pooling's backward, exact: 1 / POOL^2 of the pooled gradient each
                    gs_at = gs_ptr + t * (step // (POOL * POOL)) + gs_rows[:, None] + cs[None, :]
                    gs = tl.load(gs_at, mask=mask, other=0.0).to(ACC) * (1.0 / (POOL * POOL))
                surrogate = tl.load(scratch + t * (BLOCK_R * BLOCK_C))
                g = tl.where(mask, gs * surrogate + carry, 0.0)  # dL/dv_t = dL/dy_t
                carry = leak * g
                if TRAINING:
                    tl.store(g_ptr + t * step + offs, g.to(g_ptr.dtype.element_ty), mask=mask)
                else:
                    scale = tl.load(scale_ptr + t * C + cs, mask=cmask, other=0.0)
                    tl.store(g_ptr + t * step + offs, (scale[None, :] * g).to(g_ptr.dtype.element_ty),
                             mask=mask)
                if SUMS:
                    z = tl.load(z_ptr + t * step + offs, mask=mask, other=0.0).to(ACC)
                    mean = tl.load(mean_ptr + t * C + cs, mask=cmask, other=0.0)
                    rstd = tl.load(rstd_ptr + t * C + cs, mask=cmask, other=0.0)
                    xhat = (z - mean[None, :]) * rstd[None, :]
                    at = t * n_split * C
                    # float64 partial sums, for the reason the statistics kernel merges in it
                    sum_g = tl.sum(g, axis=0).to(tl.float64)
                    sum_gx = tl.sum(g * xhat, axis=0).to(tl.float64)
                    tl.store(psum_g + at, tl.load(psum_g + at, mask=cmask) + sum_g, mask=cmask)
                    tl.store(psum_gx + at, tl.load(psum_gx + at, mask=cmask) + sum_gx, mask=cmask)
            tl.debug_barrier()

    @triton.jit
    def _batchnorm_grad_kernel(z_ptr, g_ptr, mean_ptr, scale_ptr, rstd_ptr, a_ptr, b_ptr, R, C,
                               BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
        """In place: g -> dz = scale * (g - a - xhat * b), the BatchNorm backward of step t."""
        t = tl.program_id(2)
        rs = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cs < C
        mask = (rs < R)[:, None] & cmask[None, :]
        offs = t.to(tl.int64) * R * C + rs.to(tl.int64)[:, None] * C + cs[None, :]
        z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(ACC)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
        mean = tl.load(mean_ptr + t * C + cs, mask=cmask, other=0.0)
        rstd = tl.load(rstd_ptr + t * C + cs, mask=cmask, other=0.0)
        scale = tl.load(scale_ptr + t * C + cs, mask=cmask, other=0.0)
        a = tl.load(a_ptr + t * C + cs, mask=cmask, other=0.0)
        b = tl.load(b_ptr + t * C + cs, mask=cmask, other=0.0)
        xhat = (z - mean[None, :]) * rstd[None, :]
        dz = scale[None, :] * (g - a[None, :] - xhat * b[None, :])
        tl.store(g_ptr + offs, dz.to(g_ptr.dtype.element_ty), mask=mask)


_TL_ACC = {torch.float64: "float64", torch.float32: "float32"}


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tiles(C: int, elements: int, device):
    """(rows, channels) of a tile of about `elements` values. The Triton interpreter (CPU)
    costs per operation, not per element, so there tiles are as large as can be."""
    if device.type != "cuda":
        block_c = triton.next_power_of_2(C)
        return max((1 << 16) // block_c, 1), block_c
    block_c = min(triton.next_power_of_2(C), 64)
    return max(elements // block_c, 1), block_c


def _splits(rows: int, block_r: int, programs_per_split: int, device) -> tuple[int, int]:
    """How many programs share the rows of a (step, channel block): enough to fill the GPU."""
    if device.type == "cuda":
        target = PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 4
    tiles = triton.cdiv(rows, block_r)
    n_split = max(1, min(tiles, target // max(programs_per_split, 1)))
    rows_per_split = triton.cdiv(tiles, n_split) * block_r
    return triton.cdiv(rows, rows_per_split), rows_per_split


_NEURON_CONSTANTS: dict = {}


def _neuron_constants(leak: float, threshold: float, z: torch.Tensor) -> torch.Tensor:
    """[leak, threshold, surrogate scale] on z's device, in the accumulation dtype.

    A tensor, not scalar arguments: Triton passes a Python float as float32, which would put
    float32 roundings of 0.95 and 0.3 into float64 runs. Made once per setting: a host-to-device
    copy waits for the GPU, and one per kernel launch left the GPU idle between launches.
    """
    key = (leak, threshold, _acc_dtype(z.dtype), z.device)
    if key not in _NEURON_CONSTANTS:
        _NEURON_CONSTANTS[key] = torch.tensor([leak, threshold, SURROGATE_SCALE], dtype=key[2],
                                              device=z.device)
    return _NEURON_CONSTANTS[key]


def batch_stats(z: torch.Tensor):
    """Per-(t, c) mean and biased variance of z [T, R, C] over its R rows, in the accumulation
    dtype."""
    T, R, C = z.shape
    acc = _acc_dtype(z.dtype)
    block_r, block_c = _tiles(C, 4096, z.device)
    if z.device.type != "cuda":
        # The interpreter's tl.sum adds a tile's rows one after another, where a GPU adds them
        # as a tree: tiles of a GPU's 64 rows keep those sums as short, and as accurate.
        block_r = min(block_r, 64)
    n_split, rows_per_split = _splits(R, block_r, T * triton.cdiv(C, block_c), z.device)
    # the splits' moments, merged here in float64 as the kernel merges its tiles
    pmean = torch.empty((T, n_split, C), device=z.device, dtype=torch.float64)
    pm2 = torch.empty_like(pmean)
    _stats_kernel[(T, triton.cdiv(C, block_c), n_split)](
        z, pmean, pm2, R, C, rows_per_split, BLOCK_R=block_r, BLOCK_C=block_c,
        ACC=getattr(tl, _TL_ACC[acc]))
    counts = (R - torch.arange(n_split, device=z.device, dtype=torch.float64) * rows_per_split)
    counts = counts.clamp(0, rows_per_split).view(1, n_split, 1)
    mean = (pmean * counts).sum(1) / R
    m2 = pm2.sum(1) + (counts * (pmean - mean[:, None, :]) ** 2).sum(1)
    return mean.to(acc), (m2 / R).to(acc)


class BNTTLIF(torch.autograd.Function):
    """spikes [T, R, C] = LIF(BNTT(z)) for contiguous z [T, R, C]; see the module docstring.
    With pool = k > 1, z's rows are B maps of `hw` = (H, W) pixels and the spikes come out
    average-pooled over k x k windows: [T, R / k^2, C]."""

    @staticmethod
    def forward(ctx, z, weight, running_mean, running_var, num_batches_tracked,
                training: bool, momentum: float, eps: float, leak: float, threshold: float,
                group=None, codes: bool = False, pool: int = 1, hw: tuple = (1, 1)):
        T, R, C = z.shape
        acc = _acc_dtype(z.dtype)
        count = R
        if training:
            if R < 2:
                raise ValueError(f"BNTT needs more than 1 value per channel when training, got {R}")
            mean, var = batch_stats(z)
            if group is not None:  # the global batch's statistics (bntt/sync.py)
                count, mean, var = merge_moments(R, mean, var, running_mean[:T].to(acc), group)
            update_running_statistics(running_mean[:T], running_var[:T], num_batches_tracked[:T],
                                      mean, var, count, momentum)
        else:
            mean, var = running_mean[:T].to(acc), running_var[:T].to(acc)
        rstd = 1.0 / torch.sqrt(var + eps)
        scale = weight[:T].detach().to(acc) * rstd
        window = pool * pool
        spikes = z.new_empty((T, R // window, C))
        # (spikes again when no codes are wanted: the kernel does not write them then)
        int8_spikes = torch.empty_like(spikes, dtype=torch.int8) if codes else spikes
        block_r, block_c = _tiles(C, 1024, z.device)
        block_r = max(block_r, window)  # whole windows per tile
        _forward_kernel[(triton.cdiv(R, block_r), triton.cdiv(C, block_c))](
            z, spikes, int8_spikes, mean.contiguous(), scale.contiguous(),
            _neuron_constants(leak, threshold, z), R, C, *hw, T=T, CODES=codes, POOL=pool,
            BLOCK_R=block_r, BLOCK_C=block_c, ACC=getattr(tl, _TL_ACC[acc]))
        ctx.save_for_backward(z, weight, mean, rstd, scale)
        ctx.settings = (training, leak, threshold, group, count, pool, hw)
        if codes:
            ctx.mark_non_differentiable(int8_spikes)
            return spikes, int8_spikes
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes, *_):
        z, weight, mean, rstd, scale = ctx.saved_tensors
        training, leak, threshold, group, count, pool, hw = ctx.settings
        T, R, C = z.shape
        acc = mean.dtype
        tl_acc = getattr(tl, _TL_ACC[acc])
        grad_spikes = grad_spikes.contiguous()
        block_r, block_c = _tiles(C, BACKWARD_TILE, z.device)
        n_split, rows_per_split = _splits(R, block_r, triton.cdiv(C, block_c), z.device)
        grid = (triton.cdiv(C, block_c), n_split)
        scratch = torch.empty(grid[0] * grid[1] * T * block_r * block_c, device=z.device, dtype=acc)
        sums = training or ctx.needs_input_grad[1]
        psum = torch.empty((2, T, n_split, C) if sums else (0,), device=z.device,
                           dtype=torch.float64)
        # dL/dy in training (the BatchNorm backward below turns it into dL/dz in place), or
        # dL/dz directly in eval mode. In z's dtype: under autocast dL/dz is bf16 anyway.
        grad_z = torch.empty_like(z)
        _backward_scan_kernel[grid](
            z, grad_spikes, grad_z, mean, scale, rstd, psum, scratch,
            _neuron_constants(leak, threshold, z), R, C, *hw, rows_per_split,
            T=T, TRAINING=training, SUMS=sums, POOL=pool, BLOCK_R=block_r,
            BLOCK_C=block_c, ACC=tl_acc, num_warps=BACKWARD_WARPS)
        grad_weight = None
        if sums:
            sum_g, sum_gx = psum.sum(2).to(acc)
            if ctx.needs_input_grad[1]:  # gamma's gradient from these rows; DDP adds the rest
                grad_weight = torch.zeros_like(weight)
                grad_weight[:T] = sum_gx.to(weight.dtype)
            if training and group is not None:
                sum_g, sum_gx = all_reduce_sum([sum_g, sum_gx], group)
        if training and ctx.needs_input_grad[0]:
            block_r, block_c = _tiles(C, 2048, z.device)
            _batchnorm_grad_kernel[(triton.cdiv(R, block_r), triton.cdiv(C, block_c), T)](
                z, grad_z, mean, scale, rstd, (sum_g / count).contiguous(), (sum_gx / count).contiguous(),
                R, C, BLOCK_R=block_r, BLOCK_C=block_c, ACC=tl_acc)
        if not ctx.needs_input_grad[0]:
            grad_z = None
        return (grad_z, grad_weight, None, None, None, None, None, None, None, None, None, None,
                None, None)


def bntt_lif(z: torch.Tensor, bntt, neuron, codes: bool = False, pool: int = 1):
    """LIFNeuron(BNTT(z)) for z [T, B, C] or [T, B, C, H, W], with the fused kernels; with
    codes=True, (spikes, the same spikes as int8), both laid out alike. With pool = k > 1 (maps
    only; k = 2 or 4, H and W multiples of k: `fusable_pool`), the spikes come out
    k x k average-pooled, [T, B, C, H / k, W / k], as `nn.AvgPool2d(k)` of the spikes would make
    them, and the codes are the window counts (the pooled spikes times k^2).

    The kernels see [T, B*H*W, C]; a channels-last z (what the fused engine feeds its convs)
    is that already, any other layout is copied once.
    """
    T, B, C = z.shape[:3]
    if T > MAX_STEPS:
        raise ValueError(f"the fused kernels handle at most {MAX_STEPS} time steps, got {T}")
    hw = tuple(z.shape[3:]) if z.dim() == 5 else (1, 1)
    if pool != 1 and not fusable_pool(pool, hw):
        raise ValueError(f"the fused kernels pool k x k windows with k^2 a power of two up to "
                         f"{MAX_POOL_WINDOW} over maps whose sides k divides, not k={pool} over "
                         f"{'x'.join(map(str, z.shape[3:])) or 'vectors'}")
    rows = z.movedim(2, -1).reshape(T, -1, C).contiguous()
    out = BNTTLIF.apply(rows, bntt.weight, bntt.running_mean, bntt.running_var,
                        bntt.num_batches_tracked, bntt.training, bntt.momentum, bntt.eps,
                        neuron.leak, neuron.threshold, bntt.sync_group, codes, pool, hw)
    shape = (T, B, *(side // pool for side in z.shape[3:]), C)
    maps = [o.reshape(shape).movedim(-1, 2) for o in (out if codes else (out,))]
    return tuple(maps) if codes else maps[0]


def fusable_pool(k: int, hw: tuple) -> bool:
    """Whether the kernels can pool k x k windows of H x W maps (`bntt_lif(..., pool=k)`)."""
    return (k >= 1 and (k * k) & (k * k - 1) == 0 and k * k <= MAX_POOL_WINDOW
            and len(hw) == 2 and hw[0] % k == 0 and hw[1] % k == 0)
