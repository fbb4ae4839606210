"""The buffer pool that lets the paper model's full-size volumes reuse each other's memory within a forward."""
from __future__ import annotations

import threading

import pytest
import torch

from scanssc_ros.model import buffer_pool, fastpath, layers
from scanssc_ros.model.mixer import Fuser


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(buffer_pool, "MIN_BYTES", 0)


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def test_a_buffer_is_handed_out_again_only_once_nothing_uses_it(small_blocks):
    with buffer_pool.pooled() as pool:
        a = buffer_pool.empty((4, 5), torch.float32, torch.device("cpu"))
        first = _ptr(a)
        view = a[1:3].t()  # a view keeps the buffer in use after the tensor is gone
        del a
        b = buffer_pool.empty((4, 5), torch.float32, torch.device("cpu"))
        assert _ptr(b) != first
        del view
        c = buffer_pool.empty((20,), torch.float32, torch.device("cpu"))  # same size, other shape
        assert _ptr(c) == first
        arr = c.numpy()  # numpy's array holds the tensor
        del c
        d = buffer_pool.empty((2, 10), torch.float32, torch.device("cpu"))
        assert _ptr(d) not in (first, _ptr(b))
        del arr
        assert _ptr(buffer_pool.empty((5, 4), torch.float32, torch.device("cpu"))) == first
        assert (pool.allocated, pool.reused) == (3, 2)


def test_sizes_and_dtypes_are_kept_apart_and_idle_others_released_on_a_miss(small_blocks):
    with buffer_pool.pooled() as pool:
        a = buffer_pool.empty((8,), torch.float32, torch.device("cpu"))
        b = buffer_pool.empty((8,), torch.int32, torch.device("cpu"))
        held = _ptr(b)
        del a, b
        c = buffer_pool.empty((9,), torch.float32, torch.device("cpu"))  # a miss: the idle ones go back to malloc
        assert pool.allocated == 3 and pool.reused == 0
        assert sum(len(v) for v in pool._buffers.values()) == 1
        d = buffer_pool.empty((8,), torch.int32, torch.device("cpu"))
        assert pool.allocated == 4 and c.numel() == 9 and d.dtype == torch.int32
        del held


def test_channels_last_volumes_and_errors(small_blocks):
    with buffer_pool.pooled():
        v = buffer_pool.empty((2, 3, 4, 5, 6), torch.float32, torch.device("cpu"), torch.channels_last_3d)
        assert v.shape == (2, 3, 4, 5, 6) and v.is_contiguous(memory_format=torch.channels_last_3d)
        with pytest.raises(ValueError, match="not pooled"):
            buffer_pool.empty((2, 3, 4, 5), torch.float32, torch.device("cpu"), torch.channels_last)


def test_no_pool_outside_the_block_in_other_threads_or_below_the_size(monkeypatch):
    with buffer_pool.pooled() as pool:
        small = buffer_pool.empty((16,), torch.float32, torch.device("cpu"))  # far below MIN_BYTES
        seen = []
        t = threading.Thread(target=lambda: seen.append(buffer_pool._ACTIVE.get()))
        t.start()
        t.join()
        assert pool.allocated == 0 and small.shape == (16,) and seen == [None]
    assert buffer_pool._ACTIVE.get() is None
    monkeypatch.setattr(buffer_pool, "_use_count", None)  # a torch without the private count: plain allocation
    with buffer_pool.pooled() as pool:
        assert pool is None and buffer_pool.empty((3,), torch.float32, torch.device("cpu")).shape == (3,)


def _fuser(seed: int) -> Fuser:
    torch.manual_seed(seed)
    f = Fuser(8, (2, 1, 1), (8, 8, 8), (1, 2, 2), 8, 4).eval()
    for m in f.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return f


def test_fuser_on_winograd_reuses_its_volumes_and_matches_without_pool(monkeypatch, small_blocks):
    """The mixers under the pool (as the paper model's 128-channel ones run): the same result bitwise as with
    plain allocations, volumes reused, the stacked conv1 + shortcut results in buffers of their own."""
    monkeypatch.setattr(layers, "_WINOGRAD_MIN_CHANNEL_PRODUCT", 1)
    f = _fuser(3)
    xs = [torch.randn(1, 8, 8, 8, 4) for _ in range(3)]
    pools = []
    real = buffer_pool.pooled

    def spy():
        cm = real()
        pools.append(cm)
        return cm

    monkeypatch.setattr(buffer_pool, "pooled", spy)
    with torch.inference_mode():
        pooled_out = f(*xs).clone()
        with fastpath.reference_ops():
            ref = f(*xs)
    monkeypatch.setattr(buffer_pool, "_use_count", None)
    with torch.inference_mode():
        plain = f(*xs)
    assert torch.equal(pooled_out, plain)
    torch.testing.assert_close(pooled_out, ref, rtol=1e-4, atol=1e-4)
    assert len(pools) == 2  # the fast calls enter a pool (the second finds none to use), the reference does not


def test_pool_reuse_counts_in_the_fuser(monkeypatch):
    monkeypatch.setattr(layers, "_WINOGRAD_MIN_CHANNEL_PRODUCT", 1)
    monkeypatch.setattr(buffer_pool, "MIN_BYTES", 8 * 8 * 8 * 4 * 4)  # full-size volumes only, as in the paper's
    f = _fuser(4)
    made = []
    real_init = buffer_pool.BufferPool.__init__

    def init(self):
        real_init(self)
        made.append(self)

    monkeypatch.setattr(buffer_pool.BufferPool, "__init__", init)
    with torch.inference_mode():
        f(*(torch.randn(1, 8, 8, 8, 4) for _ in range(3)))
    (pool,) = made
    # each mixer: stacked conv1 + shortcut (2), conv2, block 2's two convs, upsampled lateral, FPN conv: 7 volumes
    # of one size; from the second mixer on most of them come back
    assert pool.reused > pool.allocated > 0
    assert {k[0] for k in pool._buffers} == {8 * 8 * 8 * 4}


@pytest.mark.parametrize("axis", ["depth", "width", "height"])
def test_scan_block_under_the_pool_matches_and_reuses_its_volumes(small_blocks, axis):
    from scanssc_ros.model.scan import ScanBlock

    torch.manual_seed(6)
    blk = ScanBlock(8, 2, 16, axis, dropout=0.0).eval()
    vol = torch.randn(1, 4, 6, 5, 8)
    pos = torch.randn(6, 5, 8)
    with torch.inference_mode():
        plain = blk(vol, pos)
        with buffer_pool.pooled() as pool:
            first = blk(vol, pos).clone()
            second = blk(vol, pos)
        with fastpath.reference_ops():
            ref = blk(vol, pos)
    assert torch.equal(first, plain) and torch.equal(second, plain)
    torch.testing.assert_close(plain, ref, rtol=1e-5, atol=1e-5)
    # depth and width gather their sequences (one copy) and write the result; the second call reuses them
    assert pool.allocated == (1 if axis == "height" else 2) and pool.reused >= 1


def test_whole_model_is_bitwise_the_same_with_and_without_the_pool(monkeypatch, small_blocks):
    """Every pooled allocation site in one forward (Scan results and sequences, mixer volumes, upsampling), with
    every block pooled however small, against plain allocations; and the cross-attention's in-place write of the
    proposal voxels (no gradient) against its copy (gradient enabled)."""
    from scanssc_ros.config import variant
    from scanssc_ros.model.examples import example_inputs
    from scanssc_ros.model.scanssc import ScanSSC

    monkeypatch.setattr(layers, "_WINOGRAD_MIN_CHANNEL_PRODUCT", 1)  # the tiny mixers on Winograd, as the paper's
    torch.manual_seed(7)
    model = ScanSSC(variant("tiny")).eval()
    inputs = example_inputs(model.config, 1)
    made = []
    real_init = buffer_pool.BufferPool.__init__
    monkeypatch.setattr(buffer_pool.BufferPool, "__init__", lambda self: real_init(self) or made.append(self))
    with torch.no_grad():
        pooled = model(inputs).logits
    assert len(made) == 1 and made[0].reused > 0
    monkeypatch.setattr(buffer_pool, "_use_count", None)
    with torch.no_grad():
        plain = model(inputs).logits
    assert torch.equal(pooled, plain)
    with torch.enable_grad():
        graded = model(inputs).logits  # parameters need gradients: off the fast paths, a reference of its own
    torch.testing.assert_close(graded, plain, rtol=1e-4, atol=1e-4)


def test_gather_table_in_reused_memory_is_f_pad_of_the_values(small_blocks):
    """The self-attention's padded value table written into a pooled buffer that held NaNs: borders zeroed, the
    interior the values, bitwise F.pad's table."""
    from scanssc_ros.model.msda import gather_table

    g = torch.Generator().manual_seed(8)
    value = torch.randn(1, 5 * 7, 2, 4, generator=g)
    ref = gather_table(value, [(5, 7)]).rows
    with buffer_pool.pooled() as pool:
        buffer_pool.empty((1, 2, 8, 10, 4), torch.float32, torch.device("cpu")).fill_(float("nan"))
        rows = gather_table(value, [(5, 7)]).rows
        assert pool.reused == 1
    assert torch.equal(rows, ref)


def test_the_pool_is_wanted_for_cpu_inference_on_the_fast_paths_only(monkeypatch):
    x = torch.zeros(2)
    with torch.no_grad():
        assert buffer_pool.wanted(x, training=False)
        assert not buffer_pool.wanted(x, training=True)
        assert not buffer_pool.wanted(torch.zeros(2, device="meta"), training=False)
        with fastpath.reference_ops():
            assert not buffer_pool.wanted(x, training=False)
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        assert not buffer_pool.wanted(x, training=False)
    monkeypatch.undo()
    with torch.enable_grad():
        assert not buffer_pool.wanted(x, training=False)
