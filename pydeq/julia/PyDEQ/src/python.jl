# Python entry points: tensors arrive as flat, contiguous, detached torch tensors (Py objects)
# plus their torch shape; DLPack wraps them without copying and the shape is reversed because
# torch is row-major and Julia column-major.

"""
    wrap(o, shape)

Wrap the flat DLPack-capable Python tensor `o` as a Julia array of size `reverse(shape)`,
sharing memory. A CUDA tensor becomes a `CuArray` once CUDA.jl is loaded.
"""
function wrap(o, shape)
    dims = reverse(Tuple(Int(d) for d in shape))
    return reshape(wrap(o), dims)
end
# `Py(o)`: juliacall may hand over an object with `__array__` as a `PyArray`; `Py` gives back the
# Python object, whose `__dlpack__` shares its memory either way.
wrap(o) = DLPack.from_dlpack(Py(o))

"""
    synchronize(x)

Wait until the device that holds `x` has finished its queued work (a no-op on the CPU; the
CUDA extension makes it `CUDA.synchronize()`), so torch never reads an unfinished result.
"""
synchronize(::AbstractArray) = nothing

"""
    py_build(json)

[`build`](@ref) for Python callers: takes the spec's JSON text, returns the handle.
"""
py_build(json::AbstractString) = build(String(json))

"""
    py_forward(handle, z, residual, x, θ, zshape, xshape)

[`forward!`](@ref) on torch tensors: `z`, `residual`, `x` and `θ` are flat tensors, `zshape`
and `xshape` their torch shapes. Returns the number of function evaluations.
"""
function py_forward(handle::Integer, z, residual, x, θ, zshape, xshape)
    z_out = wrap(z, zshape)
    nfe = forward!(z_out, wrap(residual), handle, wrap(x, xshape), wrap(θ))
    synchronize(z_out)
    return nfe
end

"""
    py_vjp(handle, gx, gθ, x, θ, z_star, gz, zshape, xshape)

[`vjp!`](@ref) on torch tensors, shapes as for [`py_forward`](@ref).
"""
function py_vjp(handle::Integer, gx, gθ, x, θ, z_star, gz, zshape, xshape)
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
    return nothing
end
