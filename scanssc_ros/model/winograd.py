"""3x3x3 convolution (stride 1, zero padding 1) by Winograd's minimal filtering F(2x2x2, 3x3x3), for CPU inference.

Each 2x2x2 block of outputs is computed from a 4x4x4 input tile: the tile and the kernel are transformed
(B^T d B and G g G^T along every axis), multiplied position by position, which for all channels at once is 64
matrix products (Cout x Cin) @ (Cin x tiles), and transformed back (A^T m A). That is 64 products per 8 outputs
instead of 27 per output: 3.4x fewer multiply-adds. The transforms only add and subtract (the kernel's 1/2 are
applied once, to the weights), so the result is as accurate as a direct float32 convolution (errors against
float64 were 3e-6 here, oneDNN's 1.5e-5 on the paper mixer's 128-channel volume).

The paper model's 3D mixers spend most of their time in 128 -> 128 convolutions over 128x128x16 voxels; oneDNN
took 1.7-2.1 s for one of them on 2 cores, the channels-first version of this 1.05-1.3 s (the 64 products alone
take 0.52 s), the channels-last one 1.06 s against its 1.34 s in the same run. Narrow ones (the lite model's 8-32
channels) stay on oneDNN, where the transforms would cost more than the products save.

Higher orders were measured and left out: F(4x4x4) would need 2.4x fewer products than this, F(3x3x3) 1.7x, but
their float32 errors against float64 on that volume were 1.7e-4 and 4.8e-5 (this: 2.5e-6, oneDNN 9e-6).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

# kernel transform G (4 x 3); data B^T and output A^T are the +-1 patterns spelt out in _data_axis/_output_axis
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
# elements of one chunk's transformed input (64 positions x Cin x tiles): 16 MB, which keeps the transforms'
# passes over it mostly in cache (larger chunks were up to 2x slower overall)
_CHUNK_ELEMENTS = 1 << 22


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, 3, 3, 3) -> (64, Cout, Cin): G g G^T along the three kernel axes, computed in float64."""
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ai,bj,ck,oxijk->abcox", g, g, g, weight.detach().double())
    return u.reshape(64, weight.shape[0], weight.shape[1]).to(weight.dtype).contiguous()


def _data_axis(src: torch.Tensor, axis: int, tiles: int, out: torch.Tensor) -> None:
    """B^T along ``axis`` of src (4-wide windows every 2 steps) into the 4 slices of out's leading axis."""
    index = (slice(None),) * axis + (slice(None, None, 2),)
    d0, d1, d2, d3 = (src.narrow(axis, k, 2 * tiles - 1)[index] for k in range(4))
    torch.sub(d0, d2, out=out[0])
    torch.add(d1, d2, out=out[1])
    torch.sub(d2, d1, out=out[2])
    torch.sub(d1, d3, out=out[3])


def _output_axis(m: torch.Tensor, axis: int, out0: torch.Tensor, out1: torch.Tensor) -> None:
    """A^T along ``axis`` of m (4 positions -> 2 outputs)."""
    m0, m1, m2, m3 = (m.select(axis, k) for k in range(4))
    torch.add(m0, m1, out=out0).add_(m2)
    torch.sub(m1, m2, out=out1).sub_(m3)


def _buffer(flat: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
    return flat[:math.prod(shape)].view(shape)


def conv3d_3x3x3(x: torch.Tensor, u: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, padding=1)`` for a 3x3x3 kernel given as ``u = transform_weight(weight)``.
    x (N, Cin, D, H, W) of any size and memory layout; returns (N, Cout, D, H, W) in channels-last memory
    (``torch.channels_last_3d``), fastest when x is channels-last too, as in a chain of these convolutions.

    The work runs channels-last: every transform pass then reads and writes runs of Cin or Cout contiguous
    floats. With the channels outermost, the passes along the innermost spatial axis read every second float and
    the last output pass wrote two floats at a time; for the paper mixers' 128 channels over 128x128x16 the
    transforms took as long as the 64 matrix products."""
    N, C, D, H, W = x.shape
    Co = u.shape[1]
    if u.shape != (64, Co, C):
        raise ValueError(f"transformed weight {tuple(u.shape)} does not fit {C} input channels")
    Td, Th, Tw = (D + 1) // 2, (H + 1) // 2, (W + 1) // 2
    Wp = 2 * Tw + 2  # padded columns of a chunk
    out = x.new_empty(N, 2 * Td, 2 * Th, 2 * Tw, Co)
    # a chunk is td tile planes, or, where one plane is over the budget (the paper's 128x128 planes: 134 MB),
    # tr tile rows of one plane
    plane = 64 * C * Th * Tw
    td_step = max(1, _CHUNK_ELEMENTS // plane)
    tr_step = Th if plane <= _CHUNK_ELEMENTS else max(1, _CHUNK_ELEMENTS // (64 * C * Tw))
    td_max, tr_max = min(td_step, Td), min(tr_step, Th)
    # a chunk's input with a zero border: one plane and row before, and after them one more where the size is odd
    # (the extra outputs are cut). Column borders are written once; a padded copy of the whole input would be
    # fresh memory, faulted in page by page on every call.
    src_buf = x.new_zeros(2 * td_max + 2, 2 * tr_max + 2, Wp, C)
    v1_flat = x.new_empty(4 * td_max * (2 * tr_max + 2) * Wp * C)
    v2_flat = x.new_empty(16 * td_max * tr_max * Wp * C)
    v3_flat = x.new_empty(64 * td_max * tr_max * Tw * C)
    m_flat = x.new_empty(64 * td_max * tr_max * Tw * Co)
    z_flat = x.new_empty(32 * td_max * tr_max * Tw * Co)
    y_flat = x.new_empty(16 * td_max * tr_max * Tw * Co)
    ut = u.transpose(1, 2)  # (64, Cin, Cout): tiles x Cin times Cin x Cout
    planes = x.permute(0, 2, 3, 4, 1)  # (N, D, H, W, Cin), a view
    for n in range(N):
        blocks = out[n].view(Td, 2, Th, 2, Tw, 2, Co)
        for t0 in range(0, Td, td_step):
            td = min(td_step, Td - t0)
            # padded planes 2 t0 .. 2 (t0 + td) + 1 = input planes from 2 t0 - 1
            first, end = max(2 * t0 - 1, 0), min(2 * (t0 + td) + 1, D)
            a, b = first - (2 * t0 - 1), end - (2 * t0 - 1)
            for r0 in range(0, Th, tr_step):
                tr = min(tr_step, Th - r0)
                src = src_buf[:2 * td + 2, :2 * tr + 2]
                row0, row1 = max(2 * r0 - 1, 0), min(2 * (r0 + tr) + 1, H)
                ra, rb = row0 - (2 * r0 - 1), row1 - (2 * r0 - 1)
                src[a:b, ra:rb, 1:W + 1] = planes[n, first:end, row0:row1]
                src[:a].zero_()
                src[b:].zero_()
                src[a:b, :ra].zero_()
                src[a:b, rb:].zero_()
                v1 = _buffer(v1_flat, (4, td, 2 * tr + 2, Wp, C))
                _data_axis(src, 0, td, v1)
                v2 = _buffer(v2_flat, (4, 4, td, tr, Wp, C))
                _data_axis(v1, 2, tr, v2.transpose(0, 1))
                v3 = _buffer(v3_flat, (4, 4, 4, td, tr, Tw, C))
                _data_axis(v2, 4, Tw, v3.permute(2, 0, 1, 3, 4, 5, 6))
                m = _buffer(m_flat, (64, td * tr * Tw, Co))
                torch.bmm(v3.view(64, -1, C), ut, out=m)
                m = m.view(4, 4, 4, td, tr, Tw, Co)
                z = _buffer(z_flat, (4, 4, 2, td, tr, Tw, Co))
                _output_axis(m, 2, z[:, :, 0], z[:, :, 1])
                y = _buffer(y_flat, (4, 2, 2, td, tr, Tw, Co))
                _output_axis(z, 1, y[:, 0], y[:, 1])
                dst = blocks[t0:t0 + td, :, r0:r0 + tr]  # td, 2, tr, 2, Tw, 2, Co
                # y[a, b, c] is the output at offset (a, b, c) of every block
                _output_axis(y, 0, dst[:, 0].permute(2, 4, 0, 1, 3, 5), dst[:, 1].permute(2, 4, 0, 1, 3, 5))
    if bias is not None:
        out += bias
    out = out.permute(0, 4, 1, 2, 3)
    if (2 * Td, 2 * Th, 2 * Tw) != (D, H, W):
        out = out[:, :, :D, :H, :W].contiguous(memory_format=torch.channels_last_3d)
    return out
