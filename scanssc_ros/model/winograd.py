"""3x3x3 convolution (stride 1, zero padding 1) by Winograd's minimal filtering, for CPU inference: F(2x2x2, 3x3x3),
or F(4x2x2, 3x3x3) where the first spatial axis is a multiple of 4.

Each 2x2x2 block of outputs is computed from a 4x4x4 input tile: the tile and the kernel are transformed
(B^T d B and G g G^T along every axis), multiplied position by position, which for all channels at once is 64
matrix products (Cout x Cin) @ (Cin x tiles), and transformed back (A^T m A). That is 64 products per 8 outputs
instead of 27 per output: 3.4x fewer multiply-adds. The transforms only add and subtract (the kernel's 1/2 are
applied once, to the weights), so the result is as accurate as a direct float32 convolution (errors against
float64 were 3e-6 here, oneDNN's 1.5e-5 on the paper mixer's 128-channel volume).

Along the first axis a 4-output tile (F(4,3): a 6-wide window, Lavin's points 0, +-1, +-2) turns that into 96
products per 16 outputs: another 25 % fewer, and the transformed data are 6/4 instead of 8/4 of the input per
axis. Its transforms scale by up to 5 and 8, which costs accuracy: on a 128-channel 16x32x32 volume the largest
error against float64 relative to the largest output was 1.1e-6, oneDNN's direct convolution 1.2e-6, F(2x2x2)
2.9e-7. With 4 on a second axis (F(4x4x2)) it was 7.3e-6, on all three 3.0e-5 (8-25x oneDNN's): left out.

The paper model's 3D mixers spend most of their time in 128 -> 128 convolutions over 128x128x16 voxels; oneDNN
took 1.7-2.1 s for one of them on 2 cores, the channels-first version of F(2x2x2) 1.05-1.3 s (the 64 products
alone take 0.52 s), the channels-last one 1.06 s against its 1.34 s in the same run, 0.87-0.92 s later, and
F(4x2x2) 0.69-0.73 s against that. Narrow ones (the lite model's 8-32 channels) stay on oneDNN, where the
transforms would cost more than the products save.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch

from . import buffer_pool

# kernel transforms G (n x 3): F(2,3) on every axis; F(4,3) (Lavin's points 0, +-1, +-2) on the first one where the
# volume's depth is a multiple of 4. Data B^T and output A^T are the patterns spelt out in _data_axis*/_output_axis*
_G2 = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
_G4 = ((1 / 4, 0.0, 0.0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
       (1 / 24, -1 / 12, 1 / 6), (0.0, 0.0, 1.0))
# elements of one chunk's transformed input (16 n positions x Cin x tiles): 16 MB, which keeps the transforms'
# passes over it mostly in cache (larger chunks were up to 2x slower overall)
_CHUNK_ELEMENTS = 1 << 22


def depth_tile(depth: int) -> int:
    """Outputs per tile along the first spatial axis for a volume of this depth: 4 where it is a multiple of 4 (no
    planes computed only to be cut), else 2."""
    return 4 if depth % 4 == 0 else 2


def transform_weight(weight: torch.Tensor, first_tile: int = 2) -> torch.Tensor:
    """(Cout, Cin, 3, 3, 3) -> (16 n, Cout, Cin), n = first_tile + 2: G g G^T along the three kernel axes (F(4,3)
    along the first where ``first_tile`` is 4), computed in float64."""
    if first_tile not in (2, 4):
        raise ValueError(f"first_tile must be 2 or 4, not {first_tile}")
    g0 = torch.tensor(_G4 if first_tile == 4 else _G2, dtype=torch.float64, device=weight.device)
    g = torch.tensor(_G2, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ai,bj,ck,oxijk->abcox", g0, g, g, weight.detach().double())
    return u.reshape(-1, weight.shape[0], weight.shape[1]).to(weight.dtype).contiguous()


def _windows(src: torch.Tensor, axis: int, tiles: int, n: int, step: int) -> Tuple[torch.Tensor, ...]:
    """The n-wide windows every ``step`` along ``axis``: n views, the k-th holding element k of every window."""
    index = (slice(None),) * axis + (slice(None, None, step),)
    return tuple(src.narrow(axis, k, step * (tiles - 1) + 1)[index] for k in range(n))


def _data_axis(src: torch.Tensor, axis: int, tiles: int, out: torch.Tensor) -> None:
    """B^T of F(2,3) along ``axis`` of src (4-wide windows every 2 steps) into the 4 slices of out's leading axis."""
    d0, d1, d2, d3 = _windows(src, axis, tiles, 4, 2)
    torch.sub(d0, d2, out=out[0])
    torch.add(d1, d2, out=out[1])
    torch.sub(d2, d1, out=out[2])
    torch.sub(d1, d3, out=out[3])


def _data_axis4(src: torch.Tensor, axis: int, tiles: int, out: torch.Tensor, tmp: torch.Tensor) -> None:
    """B^T of F(4,3) along ``axis`` of src (6-wide windows every 4 steps) into the 6 slices of out's leading axis;
    ``tmp``: scratch of one slice's shape. Rows: 4 d0 - 5 d2 + d4, (d4 - 4 d2) +- (d3 - 4 d1),
    (d4 - d2) +- 2 (d3 - d1), 4 d1 - 5 d3 + d5."""
    d0, d1, d2, d3, d4, d5 = _windows(src, axis, tiles, 6, 4)
    torch.add(d4, d2, alpha=-5, out=out[0]).add_(d0, alpha=4)
    torch.add(d4, d2, alpha=-4, out=tmp)
    torch.add(d3, d1, alpha=-4, out=out[2])
    torch.add(tmp, out[2], out=out[1])
    torch.sub(tmp, out[2], out=out[2])
    torch.sub(d4, d2, out=tmp)
    torch.sub(d3, d1, out=out[4])
    torch.add(tmp, out[4], alpha=2, out=out[3])
    torch.add(tmp, out[4], alpha=-2, out=out[4])
    torch.add(d5, d3, alpha=-5, out=out[5]).add_(d1, alpha=4)


def _output_axis(m: torch.Tensor, axis: int, out0: torch.Tensor, out1: torch.Tensor) -> None:
    """A^T of F(2,3) along ``axis`` of m (4 positions -> 2 outputs)."""
    m0, m1, m2, m3 = (m.select(axis, k) for k in range(4))
    torch.add(m0, m1, out=out0).add_(m2)
    torch.sub(m1, m2, out=out1).sub_(m3)


def _output_axis4(m: torch.Tensor, outs: Tuple[torch.Tensor, ...], tmp: torch.Tensor) -> None:
    """A^T of F(4,3) along the leading axis of m (6 positions -> 4 outputs); ``tmp``: scratch for 4 slices of m.
    Outputs: m0 + s12 + s34, d12 + 2 d34, s12 + 4 s34, d12 + 8 d34 + m5 (s: sums, d: differences of positions)."""
    m0, m1, m2, m3, m4, m5 = m.unbind(0)
    s12, d12, s34, d34 = tmp.unbind(0)
    torch.add(m1, m2, out=s12)
    torch.sub(m1, m2, out=d12)
    torch.add(m3, m4, out=s34)
    torch.sub(m3, m4, out=d34)
    torch.add(m0, s12, out=outs[0]).add_(s34)
    torch.add(d12, d34, alpha=2, out=outs[1])
    torch.add(s12, s34, alpha=4, out=outs[2])
    torch.add(d12, d34, alpha=8, out=outs[3]).add_(m5)


def _buffer(flat: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
    return flat[:math.prod(shape)].view(shape)


def conv3d_3x3x3(x: torch.Tensor, u: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 splits: Optional[Sequence[int]] = None) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]:
    """``F.conv3d(x, weight, bias, padding=1)`` for a 3x3x3 kernel given as ``u = transform_weight(weight, t)``
    (t = 2 or 4 outputs per tile along the first spatial axis, read from u's size). x (N, Cin, D, H, W) of any size
    and memory layout; returns (N, Cout, D, H, W) in channels-last memory (``torch.channels_last_3d``), fastest
    when x is channels-last too, as in a chain of these convolutions. With ``splits`` (output channel counts
    summing to Cout): ``result.split(splits, dim=1)``, each part in memory of its own (stacked kernels of different
    layers, e.g. a ResNet block's conv1 and shortcut, share the input transform but not their results' lifetimes;
    with one size per volume the buffer pool also reuses their memory).

    The work runs channels-last: every transform pass then reads and writes runs of Cin or Cout contiguous
    floats. With the channels outermost, the passes along the innermost spatial axis read every second float and
    the last output pass wrote two floats at a time; for the paper mixers' 128 channels over 128x128x16 the
    transforms took as long as the 64 matrix products."""
    N, C, D, H, W = x.shape
    Co = u.shape[1]
    n0 = u.shape[0] // 16  # transformed positions along the first axis: 4 for F(2,3), 6 for F(4,3)
    if u.shape != (16 * n0, Co, C) or n0 not in (4, 6):
        raise ValueError(f"transformed weight {tuple(u.shape)} does not fit {C} input channels")
    t0_out = n0 - 2  # outputs per tile along the first axis
    Td, Th, Tw = -(-D // t0_out), (H + 1) // 2, (W + 1) // 2
    Wp = 2 * Tw + 2  # padded columns of a chunk
    split = splits is not None
    splits = tuple(splits) if split else (Co,)
    if sum(splits) != Co or min(splits) < 1:
        raise ValueError(f"splits {splits} do not add up to {Co} output channels")
    outs_full = [buffer_pool.empty((N, t0_out * Td, 2 * Th, 2 * Tw, c), x.dtype, x.device) for c in splits]
    bounds = [(sum(splits[:i]), sum(splits[:i + 1])) for i in range(len(splits))]
    # a chunk is td tile planes, or, where one plane is over the budget (the paper's 128x128 planes: 134 MB),
    # tr tile rows of one plane
    plane = 16 * n0 * C * Th * Tw
    td_step = max(1, _CHUNK_ELEMENTS // plane)
    tr_step = Th if plane <= _CHUNK_ELEMENTS else max(1, _CHUNK_ELEMENTS // (16 * n0 * C * Tw))
    td_max, tr_max = min(td_step, Td), min(tr_step, Th)
    # a chunk's input with a zero border: one plane and row before, and after them one more where the size is odd
    # (the extra outputs are cut). Column borders are written once; a padded copy of the whole input would be
    # fresh memory, faulted in page by page on every call.
    src_buf = x.new_zeros(t0_out * td_max + 2, 2 * tr_max + 2, Wp, C)
    v1_flat = x.new_empty(n0 * td_max * (2 * tr_max + 2) * Wp * C)
    t1_flat = x.new_empty(td_max * (2 * tr_max + 2) * Wp * C) if n0 == 6 else None
    v2_flat = x.new_empty(4 * n0 * td_max * tr_max * Wp * C)
    v3_flat = x.new_empty(16 * n0 * td_max * tr_max * Tw * C)
    m_flat = x.new_empty(16 * n0 * td_max * tr_max * Tw * Co)
    z_flat = x.new_empty(8 * n0 * td_max * tr_max * Tw * Co)
    y_flat = x.new_empty(4 * n0 * td_max * tr_max * Tw * Co)
    ut = u.transpose(1, 2)  # (16 n, Cin, Cout): tiles x Cin times Cin x Cout
    planes = x.permute(0, 2, 3, 4, 1)  # (N, D, H, W, Cin), a view
    for n in range(N):
        blocks = [o[n].view(Td, t0_out, Th, 2, Tw, 2, o.shape[-1]) for o in outs_full]
        for t0 in range(0, Td, td_step):
            td = min(td_step, Td - t0)
            # padded planes t0_out t0 .. t0_out (t0 + td) + 1 = input planes from t0_out t0 - 1
            first, end = max(t0_out * t0 - 1, 0), min(t0_out * (t0 + td) + 1, D)
            a, b = first - (t0_out * t0 - 1), end - (t0_out * t0 - 1)
            for r0 in range(0, Th, tr_step):
                tr = min(tr_step, Th - r0)
                src = src_buf[:t0_out * td + 2, :2 * tr + 2]
                row0, row1 = max(2 * r0 - 1, 0), min(2 * (r0 + tr) + 1, H)
                ra, rb = row0 - (2 * r0 - 1), row1 - (2 * r0 - 1)
                src[a:b, ra:rb, 1:W + 1] = planes[n, first:end, row0:row1]
                src[:a].zero_()
                src[b:].zero_()
                src[a:b, :ra].zero_()
                src[a:b, rb:].zero_()
                v1 = _buffer(v1_flat, (n0, td, 2 * tr + 2, Wp, C))
                if n0 == 6:
                    _data_axis4(src, 0, td, v1, _buffer(t1_flat, (td, 2 * tr + 2, Wp, C)))
                else:
                    _data_axis(src, 0, td, v1)
                v2 = _buffer(v2_flat, (n0, 4, td, tr, Wp, C))
                _data_axis(v1, 2, tr, v2.transpose(0, 1))
                v3 = _buffer(v3_flat, (n0, 4, 4, td, tr, Tw, C))
                _data_axis(v2, 4, Tw, v3.permute(2, 0, 1, 3, 4, 5, 6))
                m = _buffer(m_flat, (16 * n0, td * tr * Tw, Co))
                torch.bmm(v3.view(16 * n0, -1, C), ut, out=m)
                m = m.view(n0, 4, 4, td, tr, Tw, Co)
                z = _buffer(z_flat, (n0, 4, 2, td, tr, Tw, Co))
                _output_axis(m, 2, z[:, :, 0], z[:, :, 1])
                y = _buffer(y_flat, (n0, 2, 2, td, tr, Tw, Co))
                _output_axis(z, 1, y[:, 0], y[:, 1])
                for blk, (lo, hi) in zip(blocks, bounds):
                    dst = blk[t0:t0 + td, :, r0:r0 + tr]  # td, t0_out, tr, 2, Tw, 2, channels
                    # y[a, b, c] is the output at offset (a, b, c) of every block
                    outs = tuple(dst[:, k].permute(2, 4, 0, 1, 3, 5) for k in range(t0_out))
                    part = y[..., lo:hi]
                    if n0 == 6:
                        _output_axis4(part, outs, _buffer(z_flat, (4, *part.shape[1:])))  # z is spent by now
                    else:
                        _output_axis(part, 0, *outs)
    results = []
    for o, (lo, hi) in zip(outs_full, bounds):
        if bias is not None:
            o += bias[lo:hi]
        o = o.permute(0, 4, 1, 2, 3)
        if (t0_out * Td, 2 * Th, 2 * Tw) != (D, H, W):
            o = o[:, :, :D, :H, :W].contiguous(memory_format=torch.channels_last_3d)
        results.append(o)
    return tuple(results) if split else results[0]
