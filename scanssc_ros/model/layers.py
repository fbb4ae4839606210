"""Small building blocks shared by several model files."""
from __future__ import annotations

import contextvars
import logging
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import fastpath, winograd

# Winograd F(2,3) replaces oneDNN for 3x3x3 stride-1 convolutions from this many Cin x Cout on (measured, 2 cores,
# channels-first version: 128 -> 128 over 128x128x16 1.3-1.7x faster, 256 -> 128 over 64x64x8 1.27x; channels-last
# version against oneDNN on channels-last input: 128 -> 64 over 128x128x16 (the paper head) 1.9x, 64 -> 64 1.06x)
_WINOGRAD_MIN_CHANNEL_PRODUCT = 128 * 64


# the module's spatial axis that each spatial axis of Conv3d's input is, inside ``permuted_space``
_SPACE_ORDER: contextvars.ContextVar[Optional[Tuple[int, int, int]]] = contextvars.ContextVar("scanssc_space_order",
                                                                                            default=None)


@contextmanager
def permuted_space(order: Tuple[int, int, int]) -> Iterator[None]:
    """Inside the block, Conv3d's CPU inference path takes input spatial axis i to be its own axis ``order[i]``:
    kernel, stride, padding and dilation are permuted to match, so a chain of such layers (and of ops that do not
    look at the spatial axes) run on ``permute_space(x, order)`` returns ``permute_space(result, order)``. Any
    other Conv3d call inside raises rather than convolve with an unpermuted kernel."""
    token = _SPACE_ORDER.set(tuple(order))
    try:
        yield
    finally:
        _SPACE_ORDER.reset(token)


def _in_permuted_space() -> bool:
    # torch.compile cannot trace a ContextVar; the fast paths, and so permuted_space, are off while it traces
    return not torch.compiler.is_compiling() and _SPACE_ORDER.get() is not None


def permute_space(x: torch.Tensor, order: Sequence[int]) -> torch.Tensor:
    """The view of a (N, C, D, H, W) tensor with its spatial axes in ``order``."""
    return x.permute(0, 1, *(2 + o for o in order))


def unpermute_space(x: torch.Tensor, order: Sequence[int]) -> torch.Tensor:
    """The inverse of ``permute_space(., order)`` (a view)."""
    return x.permute(0, 1, *(2 + order.index(i) for i in range(3)))


def channels_last_space_order(x: torch.Tensor) -> Optional[Tuple[int, int, int]]:
    """The spatial order in which a 5D tensor's memory is channels-last (``permute_space(x, order)`` is
    channels_last_3d-contiguous), or None where it is not dense with more than one channel innermost."""
    if x.dim() != 5 or x.shape[1] < 2 or x.stride(1) != 1:
        return None
    order = tuple(sorted(range(3), key=lambda i: (-x.stride(2 + i), i)))
    if not permute_space(x, order).is_contiguous(memory_format=torch.channels_last_3d):
        return None
    return order


def direct_conv_space_order(size: Sequence[int]) -> Optional[Tuple[int, int, int]]:
    """A spatial order that makes oneDNN's channels-last direct 3D convolutions faster on a volume of this size,
    or None to keep it: those kernels block along the innermost axis, and with the lite grid's 8 heights there
    the mixers' 16-32 channel convolutions ran 10-25 % slower than with it outermost (64 x 64 x 8: 32 -> 32 10.6
    against 9.1-9.7 ms, 16 -> 16 2.95 against 2.3-2.6 ms; whole mixers 25.1 / 27.7 / 26.0 against 21.1 / 25.5 /
    21.8 ms). Axes that are all about as long gained nothing (the stereo aggregation's 56 x 48 x 160)."""
    d, h, w = size
    return (2, 0, 1) if 2 * w <= min(d, h) else None


class _SafeBatchNorm:
    """BatchNorm that falls back to its running statistics (without updating them) when a training batch has a
    single value per channel, where batch statistics are undefined. The official model only avoided this case
    through SyncBN over 4 GPUs; single-GPU batch-1 training would otherwise fail on the camera vector BN and the
    ASPP image-pooling BN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() // x.shape[1] <= 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class SafeBatchNorm1d(_SafeBatchNorm, nn.BatchNorm1d):
    pass


class SafeBatchNorm2d(_SafeBatchNorm, nn.BatchNorm2d):
    pass


class Conv3d(nn.Conv3d):
    """nn.Conv3d that always uses oneDNN for CPU float32 inference.

    For batch 1, aten picks its own im2col kernel whenever N*C*D*H <= 20480 (a rule written for 2D maps), which
    is most 3D convolutions of this model: the stereo depth-aggregation stem and U-Net, the coarser mixer
    stages. That kernel is 5-15x slower there than oneDNN, whose result is the same up to float summation order.
    Where aten already chose oneDNN the output is bitwise unchanged. Wide 3x3x3 convolutions (the paper model's
    128-channel mixers and head) run Winograd instead (``winograd.py``), with the kernel transformed once
    and kept until the weight changes; their output is channels-last, and so is what oneDNN and the 1x1x1 product
    return for channels-last input.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast_inference(x):
            return self.inference(x, self.weight, self.bias)
        if _in_permuted_space():
            raise RuntimeError("Conv3d off its CPU inference path inside permuted_space, which only that path reads")
        return super().forward(x)

    def fast_inference(self, x: torch.Tensor) -> bool:
        return self.padding_mode == "zeros" and not isinstance(self.padding, str) and x.dim() == 5 and \
            fastpath.cpu_fp32_inference(x, self.weight)

    def inference_parts(self, x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]
                        ) -> Tuple[torch.Tensor, ...]:
        """``inference`` of several kernels with this geometry (stacked along the output channels, so x is read
        and, on Winograd, transformed once), one result per kernel: on the Winograd path each in memory of its
        own, elsewhere channel views of one result."""
        splits = [w.shape[0] for w in weights]
        return self.inference(x, torch.cat(list(weights)), torch.cat(list(biases)), splits)

    def inference(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  splits: Optional[Sequence[int]] = None) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]:
        """The fast CPU inference path with this layer's geometry and the given parameters (its own, or ones with
        a following BatchNorm folded in); only where ``fast_inference(x)``. Inside ``permuted_space`` the kernel
        and geometry are permuted like x's spatial axes. With ``splits``: the result split along its channels
        (see ``inference_parts``)."""
        y = self._inference(x, weight, bias, splits)
        if splits is not None and isinstance(y, torch.Tensor):
            return tuple(y.split(list(splits), dim=1))
        return y

    def _inference(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   splits: Optional[Sequence[int]]) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]:
        stride, padding, dilation = self.stride, self.padding, self.dilation
        order = _SPACE_ORDER.get()
        if order is not None:
            weight = permute_space(weight, order).contiguous()
            stride, padding, dilation = (tuple(g[o] for o in order) for g in (stride, padding, dilation))
        if self._pointwise:
            return _pointwise_matmul(x, weight, bias)
        if self._winograd:
            # reads any strides
            return winograd.conv3d_3x3x3(x, self._winograd_weight(weight, winograd.depth_tile(x.shape[2])), bias,
                                         splits)
        if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last_3d)):
            # a channel slice of a wider volume (BasicBlock3D's stacked conv1 + shortcut): dense, keeping the layout
            x = x.contiguous(memory_format=torch.channels_last_3d if x.stride(1) == 1 else torch.contiguous_format)
        if self.out_channels == 1 and self.groups == 1 and x.shape[1] > 1:
            # one output channel is a depthwise convolution summed over channels: oneDNN's direct kernel for a
            # single output channel is poorly vectorised (8 -> 1 channels 3x3x3 over 56 x 48 x 160: 11.5 ms,
            # against 3.2 ms this way; 32 -> 1: 40 -> 13 ms)
            y = torch.mkldnn_convolution(x, weight.reshape(x.shape[1], 1, *weight.shape[2:]), None, padding, stride,
                                         dilation, x.shape[1])
            y = y.sum(dim=1, keepdim=True)
            return y if bias is None else y.add_(bias.view(1, 1, 1, 1, 1))
        return torch.mkldnn_convolution(x, weight, bias, padding, stride, dilation, self.groups)

    def prefers_channels_last(self, x: torch.Tensor) -> bool:
        """True where this layer would run oneDNN's direct convolution on a channels-first ``x``: with 8-32
        channels it is 1.3-2.4x faster on channels-last input (and returns channels-last), so a chain of such
        layers should convert its input once. The 1x1x1 product and Winograd read either layout."""
        return self.fast_inference(x) and not self._pointwise and not self._winograd and x.shape[1] > 1 and \
            not fastpath.is_channels_last_volume(x)

    @property
    def _pointwise(self) -> bool:
        return (self.kernel_size, self.stride, tuple(self.padding), self.groups) == ((1, 1, 1), (1, 1, 1),
                                                                                  (0, 0, 0), 1)

    @property
    def _winograd(self) -> bool:
        return (self.kernel_size, self.stride, tuple(self.padding), self.dilation, self.groups) == \
            ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1) and \
            self.in_channels * self.out_channels >= _WINOGRAD_MIN_CHANNEL_PRODUCT

    def _winograd_weight(self, weight: torch.Tensor, first_tile: int = 2) -> torch.Tensor:
        # kept outside the module's tensors (no state_dict entry) with a copy of the kernel it came from: compared
        # by value on every call (~0.1 ms), because a version counter misses writes through ``.data``
        cached = self.__dict__.get("_winograd_cache")
        if cached is None or cached[2] != first_tile or cached[0].shape != weight.shape or \
                cached[0].dtype != weight.dtype or cached[0].device != weight.device or \
                not torch.equal(cached[0], weight):
            cached = (weight.detach().clone(), winograd.transform_weight(weight, first_tile), first_tile)
            self.__dict__["_winograd_cache"] = cached
        return cached[1]


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm (same parameters and state dict) whose CUDA inference takes ``group_norm_stats_affine``:
    aten's CUDA kernel gives each (sample, group) one thread block for its moments, so the 3D mixers' volumes
    (16-32 groups of millions of values) ran on 16-32 of an H200's 132 SMs and GroupNorm was 57 of the paper
    model's 135 ms of bf16 kernel time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fastpath.cuda_inference(x):
            return group_norm_stats_affine(x, self.num_groups, self.weight, self.bias, self.eps)
        if fastpath.is_channels_last_volume(x) and fastpath.cpu_fp32_inference(x):
            return group_norm_channels_last(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def fold_batch_norm(weight: torch.Tensor, bias: Optional[torch.Tensor], bn: nn.modules.batchnorm._BatchNorm
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of a convolution followed by the eval-mode ``bn``, as one convolution (recomputed per call:
    a few tens of microseconds, and never stale)."""
    with torch.no_grad():
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        w = weight * scale.view((-1,) + (1,) * (weight.dim() - 1))
        b = bn.bias - bn.running_mean * scale
        if bias is not None:
            b = b + bias * scale
    return w, b


def pointwise_parts(parts: Sequence[torch.Tensor], weight: torch.Tensor, bias: Optional[torch.Tensor]
                    ) -> torch.Tensor:
    """The 1x1x1 convolution of ``torch.cat(parts, dim=1)`` for channels-last parts, returned channels-last,
    without the concatenation: one (voxels x Cin_i) @ (Cin_i x Cout) product per part, summed in place. The
    paper mixers' concatenations were fresh 268-402 MB volumes, each faulted in page by page and written
    through a transposed copy."""
    N, _, D, H, W = parts[0].shape
    Co = weight.shape[0]
    w = weight.reshape(Co, -1)
    out = parts[0].new_empty(N, D, H, W, Co)
    for n in range(N):
        acc = out[n].view(-1, Co)
        c0 = 0
        for i, part in enumerate(parts):
            rows = part[n].permute(1, 2, 3, 0).reshape(-1, part.shape[1])  # a view of channels-last memory
            wt = w[:, c0:c0 + part.shape[1]].t()
            if i == 0:
                torch.mm(rows, wt, out=acc) if bias is None else torch.addmm(bias, rows, wt, out=acc)
            else:
                acc.addmm_(rows, wt)
            c0 += part.shape[1]
    return out.permute(0, 4, 1, 2, 3)


# The channels-last GroupNorm statistics go chunk by chunk through one reused buffer, in chunks of at least
# _GN_CHUNK_FLOATS (1 MB: x - k, its square and both sums stay in cache; an 8-channel 430k-voxel volume took
# 9.5 ms in one 14 MB chunk, 3.4 ms in 1 MB chunks) and at most _GN_MAX_CHUNKS of them (four torch calls each: on
# the paper's 0.1-1 GB volumes 1 MB chunks took 79-83 ms against 75-77 ms for 16 MB ones)
_GN_CHUNK_FLOATS = 1 << 18
_GN_ATEN_MAX_GROUP_FLOATS = 1 << 16
_GN_MAX_CHUNKS = 64
# floats per row of the channels-last GroupNorm passes: aten runs an op that broadcasts a per-channel vector over
# (voxels, C) rows one short row at a time; at 8 channels x - k took 4.9 ms on a 430k-voxel volume, 0.8 ms as
# rows of 8 voxels x 8 channels
_GN_MIN_ROW = 64


def _wide_rows(x: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """A channels-last (N, C, D, H, W) volume as (N, V / m, m * C) rows of m voxels each (a view), with m the
    largest divisor of V up to ceil(_GN_MIN_ROW / C)."""
    N, C, D, H, W = x.shape
    V = D * H * W
    m = max(d for d in range(1, max(1, -(-_GN_MIN_ROW // C)) + 1) if V % d == 0)
    return x.permute(0, 2, 3, 4, 1).reshape(N, V // m, m * C), m


def group_norm_channels_last(x: torch.Tensor, groups: int, weight: Optional[torch.Tensor],
                             bias: Optional[torch.Tensor], eps: float, inplace: bool = False) -> torch.Tensor:
    """F.group_norm of a channels-last float32 volume, returned channels-last (``inplace``: x may be written over,
    for callers that own it: one fresh volume fewer). Statistics from ``channel_moments``; for groups of at most
    ``_GN_ATEN_MAX_GROUP_FLOATS`` values aten's own kernel, whose plain float32 sums are still accurate there
    (3.5e-6 against float64 for 16 channels over 64 x 64 x 8 in 8 groups) and which takes one call instead of
    ~25 small ones (0.04-0.3 against 0.3-1 ms for the lite mixers' volumes)."""
    if x.numel() // (x.shape[0] * groups) <= _GN_ATEN_MAX_GROUP_FLOATS:
        return F.group_norm(x, groups, weight, bias, eps)
    scale, shift = group_norm_affine(*channel_moments(x), groups, weight, bias, eps)
    if inplace:
        return channel_affine_(x, scale, shift)
    out = torch.empty_like(x, memory_format=torch.channels_last_3d)
    rows, m = _wide_rows(x)
    torch.addcmul(_per_row(shift, m, x.dtype), rows, _per_row(scale, m, x.dtype), out=_wide_rows(out)[0])
    return out


def channel_moments(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (biased) variance of a channels-last float32 volume, (N, C) each in float64.

    aten's channels-last CPU GroupNorm sums in plain float32: on a 128 x 128 x 128 x 16 volume its error against
    float64 was 1e-4..6e-4 where its channels-first kernel's is 1.5e-6, and a channels-first copy and back costs
    5x the normalisation. Here per-channel sums of x - k and (x - k)^2 (k: a per-channel mean of the first few
    hundred rows, so the squares do not cancel) run chunk by chunk in aten's pairwise float32 sum and are
    accumulated in float64. Every pass works on rows of several voxels (``_wide_rows``)."""
    N, C = x.shape[:2]
    rows, m = _wide_rows(x)
    R = rows.shape[1]
    step = max(1, min(R, max(_GN_CHUNK_FLOATS // (m * C), -(-R // _GN_MAX_CHUNKS))))
    k = rows[:, :min(step, 256)].mean(dim=1).view(N, m, C).mean(dim=1).repeat(1, m).unsqueeze(1)  # (N, 1, m*C)
    s1 = torch.zeros(N, m * C, dtype=torch.float64, device=x.device)
    s2 = torch.zeros(N, m * C, dtype=torch.float64, device=x.device)
    buf = x.new_empty(N, step, m * C)
    for r0 in range(0, R, step):
        r = rows[:, r0:r0 + step]
        d = torch.sub(r, k, out=buf[:, :r.shape[1]])
        s1 += d.sum(dim=1)
        s2 += d.mul_(d).sum(dim=1)
    V = R * m
    mean = s1.view(N, m, C).sum(dim=1) / V  # of x - k
    var = (s2.view(N, m, C).sum(dim=1) / V - mean * mean).clamp_(min=0.0)
    return mean + k[:, 0, :C].double(), var


def group_norm_affine(mean: torch.Tensor, var: torch.Tensor, groups: int, weight: Optional[torch.Tensor],
                      bias: Optional[torch.Tensor], eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm from per-channel moments (N, C) as a per-channel (scale, shift), each (N, C) in the moments'
    dtype: the channels of a group merge by the law of total variance."""
    N, C = mean.shape
    mean_c = mean.view(N, groups, -1)
    mean_g = mean_c.mean(dim=2)
    var_g = var.view(N, groups, -1).mean(dim=2) + (mean_c - mean_g[..., None]).square().mean(dim=2)
    return _group_scale_shift(mean_g, var_g, C, weight, bias, eps)


def channel_affine_(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                    residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x <- x * scale + shift (+ residual) in place for a channels-last volume, with per-channel (N, C) scale and
    shift (any float dtype) and a channels-last ``residual`` of x's shape; returns x."""
    rows, m = _wide_rows(x)
    scale, shift = _per_row(scale, m, x.dtype), _per_row(shift, m, x.dtype)
    if residual is None:
        torch.addcmul(shift, rows, scale, out=rows)
    else:
        torch.addcmul(_wide_rows(residual)[0], rows, scale, out=rows).add_(shift)
    return x


def _per_row(v: torch.Tensor, m: int, dtype: torch.dtype) -> torch.Tensor:
    """A per-channel (N, C) vector laid out like ``_wide_rows``' rows: (N, 1, m * C)."""
    return v.to(dtype).repeat(1, m).unsqueeze(1)


def gelu_(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU in place on a channels-last float volume; returns x. aten's GELU kernel took 2.5 ms on an
    8-channel 56 x 48 x 160 channels-last volume and 1.6 ms on the same memory viewed as one flat run."""
    torch.ops.aten.gelu_(x.permute(0, 2, 3, 4, 1).view(-1))
    return x


def _group_scale_shift(mean: torch.Tensor, var: torch.Tensor, channels: int, weight: Optional[torch.Tensor],
                       bias: Optional[torch.Tensor], eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm as a per-channel multiply-add: (scale, shift), each (N, C), from the per-group mean and variance
    (N, groups), in the statistics' dtype."""
    per_group = channels // mean.shape[1]
    scale = (var + eps).rsqrt().repeat_interleave(per_group, dim=1)
    shift = -mean.repeat_interleave(per_group, dim=1) * scale
    if weight is not None:
        w = weight.to(scale.dtype)
        scale, shift = scale * w, shift * w
    if bias is not None:
        shift = shift + bias.to(shift.dtype)
    return scale, shift


def group_norm_stats_affine(x: torch.Tensor, groups: int, weight: Optional[torch.Tensor],
                            bias: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    """F.group_norm as a grid-wide reduction (torch.var_mean, which splits a long row over many blocks) and one
    per-channel multiply-add. Statistics in float32; under autocast the result is float32 like aten's
    group_norm (an fp32-listed op), otherwise it has the input's dtype."""
    N, C = x.shape[:2]
    out_dtype = torch.float32 if torch.is_autocast_enabled(x.device.type) else x.dtype
    with torch.autocast(device_type=x.device.type, enabled=False):
        xf = x.float()
        var, mean = torch.var_mean(xf.reshape(N, groups, -1), dim=-1, correction=0)
        scale, shift = _group_scale_shift(mean, var, C, weight, bias, eps)
        shape = (N, C) + (1,) * (x.dim() - 2)
        return torch.addcmul(shift.view(shape), xf, scale.view(shape)).to(out_dtype)


def _pointwise_matmul(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    # a 1x1x1 convolution is a (Cout x Cin) matrix times the (Cin x voxels) volume: one GEMM, where oneDNN
    # reorders the volume to its blocked layout and back (2-8x slower at 8-48 channels)
    # (torch.matmul folds a 2D x 3D product into a transposed one: 6x slower here, so bmm is spelt out)
    N, C, D, H, W = x.shape
    Co = weight.shape[0]
    if fastpath.is_channels_last_volume(x):
        # channels-last: oneDNN reads that layout as it is and returns it; for narrow outputs its 1x1x1 kernel
        # beat the (voxels x Cin) @ (Cin x Cout) product 3-5x (8 -> 8 channels over 56 x 48 x 160: 0.9 against
        # 4.6 ms) and matched it from 32 channels on
        return torch.mkldnn_convolution(x, weight, bias, (0, 0, 0), (1, 1, 1), (1, 1, 1), 1)
    w = weight.view(1, Co, C).expand(N, -1, -1)
    flat = x.reshape(N, C, D * H * W)
    out = torch.bmm(w, flat) if bias is None else torch.baddbmm(bias.view(1, -1, 1).expand(N, -1, D * H * W), w, flat)
    return out.view(N, Co, D, H, W)


class ConvTranspose3d(nn.ConvTranspose3d):
    """nn.ConvTranspose3d that runs oneDNN's deconvolution for CPU float32 inference.

    aten's size rule (see Conv3d) sends the stereo U-Net's batch-1 up-convolutions to ``slow_conv_transpose3d``,
    2.5x slower than oneDNN. The dense entry point to oneDNN's deconvolution is the one torch.compile's CPU
    backend uses (``mkldnn::_convolution_transpose_pointwise``); on channels-last input it returns channels-last,
    so the input goes in channels-last (16 -> 8 channels, 28 x 24 x 80 -> x2: 4.9 ms, against 25 ms through a
    oneDNN tensor, whose conversion back to a dense one took 15 of them). Where that op is missing (torch built
    without it) or refuses a call (a torch whose private op differs: a warning, then never again), the input goes
    in as a oneDNN tensor, which the dispatch cannot refuse, and comes back dense."""

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if _in_permuted_space():
            raise RuntimeError("ConvTranspose3d inside permuted_space, which only Conv3d reads")
        if output_size is None and self.fast_inference(x):
            return self._inference(x, self.weight, self.bias)
        return super().forward(x, output_size)

    def fast_inference(self, x: torch.Tensor) -> bool:
        return self.padding_mode == "zeros" and x.dim() == 5 and fastpath.cpu_fp32_inference(x, self.weight)

    def inference_bn(self, x: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
        """``bn(self(x))`` for an eval-mode ``bn``, as one deconvolution with the BatchNorm folded into it (the
        lite U-Net's BatchNorm over its 8-channel channels-last output took 4.8 ms); only where
        ``fast_inference(x)``. A transposed kernel is (Cin, Cout / groups, k, k, k): the scale goes on dim 1."""
        if self.groups != 1 or bn.training:
            return bn(self._inference(x, self.weight, self.bias))
        w, b = fold_batch_norm(self.weight.transpose(0, 1), self.bias, bn)
        return self._inference(x, w.transpose(0, 1).contiguous(), b)

    def _inference(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        global _DECONV
        if _DECONV is not None:
            try:
                return _DECONV(x.contiguous(memory_format=torch.channels_last_3d), weight, bias, self.padding,
                               self.output_padding, self.stride, self.dilation, self.groups, "none", [], None)
            except (RuntimeError, TypeError) as e:  # a torch whose private op differs: the public path from now on
                _log.warning("mkldnn::_convolution_transpose_pointwise failed (%s); using the oneDNN tensor path", e)
                _DECONV = None
        out = F.conv_transpose3d(x.contiguous().to_mkldnn(), weight, bias, self.stride, self.padding,
                                 self.output_padding, self.groups, self.dilation)
        return out.to_dense()


def _mkldnn_op(name: str):
    try:
        return getattr(torch.ops.mkldnn, name) if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):  # not in this torch build
        return None


_DECONV = _mkldnn_op("_convolution_transpose_pointwise")
_CONV_POINTWISE = _mkldnn_op("_convolution_pointwise")
_log = logging.getLogger(__name__)


def conv2d_silu(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: Sequence[int],
                padding: Sequence[int], dilation: Sequence[int], groups: int) -> Optional[torch.Tensor]:
    """``F.silu(F.conv2d(...))`` of a channels-last float32 map as one oneDNN convolution with the activation
    applied to each output block while it is in registers (the lite EfficientNet's 8 -> 48 expansion over
    192 x 640: 5.7 against 4.5 ms; its depthwise 3x3 1.55 against 1.2 ms), channels-last; the same values up to
    float rounding (~1e-7 relative: oneDNN's exponential). None where that op is missing from this torch build or
    refuses the call (a torch whose private op differs: a warning, then never again)."""
    global _CONV_POINTWISE
    if _CONV_POINTWISE is None:
        return None
    try:
        return _CONV_POINTWISE(x, weight, bias, list(padding), list(stride), list(dilation), groups, "swish", [], "")
    except (RuntimeError, TypeError) as e:
        _log.warning("mkldnn::_convolution_pointwise failed (%s); SiLU runs after the convolution", e)
        _CONV_POINTWISE = None
        return None


def softmax_last(x: torch.Tensor) -> torch.Tensor:
    """``x.softmax(-1)``. For a last axis shorter than one AVX2 vector (the lite model's attention weights over 4
    sampling points) on the CPU inference path, the softmax runs over that axis moved to the front: aten's kernel
    for an outer axis is vectorised across the rows, the last-axis one works row by row and took 5-6x longer
    (13 against 1.9 ms for 32768 x 4 x 2 rows of 4). From 8 on the last-axis kernel is the faster one (2.5x at 8
    and 16). Values differ by float rounding."""
    if x.dim() > 1 and x.shape[-1] < 8 and fastpath.cpu_fp32_inference(x):
        return x.movedim(-1, 0).softmax(0).movedim(0, -1).contiguous()
    return x.softmax(-1)


class LearnedPositionalEncoding(nn.Module):
    """mmdet LearnedPositionalEncoding: for an (h, w) map, pos[i, j] = [col_embed(j) | row_embed(i)]."""

    def __init__(self, num_feats: int, row_num_embed: int, col_num_embed: int) -> None:
        super().__init__()
        self.row_embed = nn.Embedding(row_num_embed, num_feats)
        self.col_embed = nn.Embedding(col_num_embed, num_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, h: int, w: int) -> torch.Tensor:
        """(h, w, 2 * num_feats)."""
        col = self.col_embed.weight[:w]
        row = self.row_embed.weight[:h]
        return torch.cat([col[None, :, :].expand(h, w, -1), row[:, None, :].expand(h, w, -1)], dim=-1)
