"""Zero-copy exchange helpers (torch <-> numpy here; Julia in the julia-marked tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pydeq import interop
from pydeq.julia import exchange


def test_torch_numpy_round_trip_shares_memory():
    t = torch.arange(12.0).reshape(3, 4)
    a = interop.to_numpy(t)
    assert interop.shares_memory(a, t)
    back = interop.from_numpy(a)
    assert interop.shares_memory(back, t)
    a[0, 0] = 42.0
    assert t[0, 0] == 42.0 and back[0, 0] == 42.0


def test_to_numpy_detaches_without_copy():
    t = torch.randn(3, requires_grad=True)
    a = interop.to_numpy(t)
    assert interop.shares_memory(a, t)


def test_flat_for_julia_is_a_view_when_contiguous_and_a_copy_otherwise():
    t = torch.randn(2, 3, 4, dtype=torch.float64)
    flat, shape = exchange.flat_for_julia("t", t)
    assert flat.data_ptr() == t.data_ptr() and flat.shape == (24,) and shape == (2, 3, 4)
    nc = t.transpose(0, 2)
    flat_nc, shape_nc = exchange.flat_for_julia("t", nc)
    assert flat_nc.data_ptr() != nc.data_ptr() and shape_nc == (4, 3, 2)
    torch.testing.assert_close(flat_nc, nc.reshape(-1))


def test_julia_sees_reversed_dimensions():
    t = torch.arange(24.0).reshape(2, 3, 4)
    flat, shape = exchange.flat_for_julia("t", t)
    julia_view = np.reshape(flat.numpy(), exchange.julia_shape(shape), order="F")
    assert julia_view.shape == (4, 3, 2)
    np.testing.assert_array_equal(julia_view, t.numpy().transpose(2, 1, 0))
    assert exchange.julia_shape(torch.Size([5, 7])) == (7, 5)


@pytest.mark.parametrize("bad", [torch.zeros(3, dtype=torch.float16), torch.zeros(3, dtype=torch.int64),
                                 torch.zeros(3, dtype=torch.bfloat16)])
def test_unsupported_dtypes_are_rejected(bad):
    with pytest.raises(TypeError, match="float32 or float64"):
        exchange.flat_for_julia("x", bad)


def test_unsupported_devices_and_types_are_rejected():
    with pytest.raises(TypeError, match="cpu or cuda"):
        exchange.check_exchangeable("x", torch.zeros(3, device="meta"))
    with pytest.raises(TypeError, match="torch.Tensor"):
        exchange.check_exchangeable("x", np.zeros(3))
    with pytest.raises(TypeError, match="only cpu tensors"):
        interop.to_numpy(torch.zeros(3, device="meta"))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        interop.from_numpy([1.0, 2.0])


def test_sync_device_is_a_no_op_on_cpu():
    exchange.sync_device(torch.zeros(2), torch.zeros(3))


def test_copy_rules_of_flat_for_julia():
    t = torch.randn(3, 4, dtype=torch.float64)
    nc = t.t()
    flat, _ = exchange.flat_for_julia("t", t, copy=False)
    assert flat.data_ptr() == t.data_ptr()  # contiguous: shared even when copies are refused
    forced, _ = exchange.flat_for_julia("t", t, copy=True)
    assert forced.data_ptr() != t.data_ptr() and forced.is_contiguous()
    torch.testing.assert_close(forced, t.reshape(-1))
    with pytest.raises(ValueError, match=r"t is not contiguous \(shape \(4, 3\), strides \(1, 4\)\).*copy=None"):
        exchange.flat_for_julia("t", nc, copy=False)
    forced_nc, shape = exchange.flat_for_julia("t", nc, copy=True)
    assert shape == (4, 3)
    torch.testing.assert_close(forced_nc, nc.reshape(-1))
    with pytest.raises(TypeError, match="copy must be None, True or False; got 'yes'"):
        exchange.flat_for_julia("t", t, copy="yes")


def test_a_shared_flat_keeps_the_buffer_alive_without_the_caller():
    t = torch.arange(6.0).reshape(2, 3)
    flat, _ = exchange.flat_for_julia("t", t)
    storage = t.untyped_storage().data_ptr()
    del t  # Julia holds only `flat` (its wrapped array keeps it alive); the buffer must outlive the caller's tensor
    assert flat.untyped_storage().data_ptr() == storage
    torch.testing.assert_close(flat, torch.arange(6.0))


class _Recorder:
    """Stands in for PyDEQ's ``py_wrap``: keeps what it receives, as the Julia array does, and writes into it."""

    def py_wrap(self, flat, shape, device):
        flat[0] = 99.0
        self.kept = flat
        return shape


@pytest.fixture
def recorder(monkeypatch):
    from pydeq.julia import _runtime

    jl = _Recorder()
    monkeypatch.setattr(_runtime, "_ENGINE", _runtime.JuliaEngine(jl))
    return jl


def test_to_julia_aliases_contiguous_tensors_and_copies_the_others(recorder):
    t = torch.zeros(2, 3)
    assert exchange.to_julia(t) == (2, 3)
    assert t[0, 0] == 99.0 and recorder.kept.data_ptr() == t.data_ptr()  # Julia's writes reach t
    nc = torch.zeros(3, 2).t()
    assert exchange.to_julia(nc) == (2, 3)
    assert nc[0, 0] == 0.0 and recorder.kept.data_ptr() != nc.data_ptr()  # a private copy: t is untouched
    with pytest.raises(ValueError, match="not contiguous"):
        exchange.to_julia(torch.zeros(3, 2).t(), copy=False)
    fresh = torch.zeros(2, 3)
    exchange.to_julia(fresh, copy=True)
    assert fresh[0, 0] == 0.0


def test_the_moved_julia_helpers_still_work_from_interop_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match=r"pydeq.interop.julia_shape moved to pydeq.julia.exchange.julia_shape"):
        assert interop.julia_shape((2, 3)) == (3, 2)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        interop.nothing_here  # noqa: B018
