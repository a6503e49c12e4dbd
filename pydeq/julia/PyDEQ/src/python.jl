# Python entry points: tensors arrive as flat, contiguous, detached torch tensors plus their
# torch shape and device; DLPack wraps them without copying and the shape is reversed because
# torch is row-major and Julia column-major.

"""
    wrap(o, shape)

View the flat tensor `o` as a Julia array of size `reverse(shape)`, sharing its memory.

DLPack.jl keeps the Python object alive through a finalizer on the flat array it returns,
and on Julia ≥ 1.11 a reshaped `Array` holds no reference to the array it was made from, so
the result carries the flat array with it ([`keep_alive`](@ref)): the Python object lives as
long as the returned array does. A CUDA tensor becomes a `CuArray` once CUDA.jl is loaded.
"""
function wrap(o, shape)
    dims = reverse(Tuple(Int(d) for d in shape))
    flat = wrap(o)
    return keep_alive(reshape(flat, dims), flat)
end

# Dense Julia arrays pass as they are, so the entry points below can be driven from plain Julia
# (the tests); anything else is a Python object for DLPack.jl's PythonCall extension, which
# takes `Py`, `PyArray` and `PyIterable` alike. juliacall hands a torch tensor over as a
# `PyIterable`: PythonCall's no-copy `PyArray` rule needs a buffer or array interface, which
# tensors lack. PyDEQ itself never loads PythonCall.
wrap(o::DenseArray) = o
wrap(o) = DLPack.from_dlpack(o)

"""
    KeepAlive(owner)

Finalizer that does nothing but hold `owner`: registered on an array, it keeps `owner`
reachable until that array is collected.
"""
struct KeepAlive{T}
    owner::T
end
(::KeepAlive)(_) = nothing

"""
    keep_alive(result, owner)

Return `result`, with `owner` kept reachable until `result` is garbage-collected.
"""
function keep_alive(result, owner)
    result === owner && return result
    finalizer(KeepAlive(owner), result)
    return result
end

"""
    on_device(f, device)

Call `f()` with CUDA.jl's active device set to `device`, the torch index of the device that
holds the tensors; `-1` (torch's `get_device()` of a CPU tensor) calls `f()` as it is.
DLPack.jl wraps a CUDA pointer in the active context, not in the one the tensor's
`device_id` names, so without this a tensor on `cuda:1` would be read in device 0's context.
"""
on_device(f, device::Integer) = device < 0 ? f() : on_cuda_device(f, Int(device))

function on_cuda_device(f, device)
    throw(ArgumentError(
        "a tensor on cuda:$device arrived but CUDA.jl is not loaded; run `using CUDA` " *
            "(pydeq does so the first time a CUDA tensor crosses)",
    ))
end

"""
    synchronize(x)

Wait until the device that holds `x` has finished its queued work (a no-op on the CPU; the
CUDA extension makes it `CUDA.synchronize()`), so torch never reads an unfinished result.
"""
synchronize(::AbstractArray) = nothing

"""
    share(a, from_dlpack)

Hand the Julia array `a` to Python without copying: `DLPack.share(a, from_dlpack)`, with
`from_dlpack` the consumer (e.g. `torch.from_dlpack`). The result has `a`'s dimensions
reversed. The CUDA extension refuses `CuArray`s under CUDA.jl 6, where DLPack.jl 0.3's CUDA
support cannot describe them.
"""
share(a::StridedArray, from_dlpack) = DLPack.share(a, from_dlpack)
function share(a, from_dlpack)
    throw(ArgumentError(
        "only strided Julia arrays can be shared without a copy; got $(typeof(a)). " *
            "Make a dense copy first, e.g. collect(a).",
    ))
end

"""
    py_build(json)

[`build`](@ref) for Python callers: takes the spec's JSON text, returns the handle.
"""
py_build(json::AbstractString) = build(String(json))

"""
    py_forward(handle, z, residual, x, θ, zshape, xshape, device = -1)

[`forward!`](@ref) on torch tensors: `z`, `residual`, `x` and `θ` are flat tensors, `zshape`
and `xshape` their torch shapes, `device` the torch index of their CUDA device (`-1`: CPU).

## Returns

`(nfe, success, retcode)`: as [`forward!`](@ref), the return code as a `String`.
"""
function py_forward(
    handle::Integer,
    z,
    residual,
    x,
    θ,
    zshape,
    xshape,
    device::Integer = -1,
)
    return on_device(device) do
        z_out = wrap(z, zshape)
        stats = forward!(z_out, wrap(residual), handle, wrap(x, xshape), wrap(θ))
        synchronize(z_out)
        (stats.nfe, stats.success, String(stats.retcode))
    end
end

"""
    py_vjp(handle, gx, gθ, x, θ, z_star, gz, zshape, xshape, device = -1)

[`vjp!`](@ref) on torch tensors, shapes and device as for [`py_forward`](@ref).
"""
function py_vjp(
    handle::Integer,
    gx,
    gθ,
    x,
    θ,
    z_star,
    gz,
    zshape,
    xshape,
    device::Integer = -1,
)
    on_device(device) do
        gx_out = wrap(gx, xshape)
        vjp!(
            gx_out,
            wrap(gθ),
            handle,
            wrap(x, xshape),
            wrap(θ),
            wrap(z_star, zshape),
            wrap(gz, zshape),
        )
        synchronize(gx_out)
    end
    return nothing
end

"""
    py_wrap(o, shape, device = -1)

[`wrap`](@ref) for `pydeq.interop.to_julia`, with the device selected as in
[`py_forward`](@ref). The result shares `o`'s memory and keeps `o` alive.
"""
py_wrap(o, shape, device::Integer = -1) = on_device(() -> wrap(o, shape), device)
