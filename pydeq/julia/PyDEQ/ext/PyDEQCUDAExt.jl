"""
    PyDEQCUDAExt

Loaded when CUDA.jl is: torch CUDA tensors then arrive as `CuArray`s (DLPack.jl's own CUDA
extension does the wrapping), every entry point runs on the tensors' device and waits for
CUDA.jl's queued work before it returns to Python.
"""
module PyDEQCUDAExt

using CUDA: CUDA, CuArray
using PyDEQ: PyDEQ

PyDEQ.synchronize(::CuArray) = CUDA.synchronize()

# `device!(f, id)` switches the task's context for the call only; DLPack.jl's wrap reads it
PyDEQ.on_cuda_device(f, device::Int) = CUDA.device!(f, device)

function PyDEQ.share(a::CuArray, from_dlpack)
    # DLPack.jl 0.3's CUDA extension names the buffer type through `CUDA.Mem`, which CUDA.jl
    # 6 removed, so `DLPack.share` of a `CuArray` throws there
    if !isdefined(CUDA, :Mem)
        throw(ArgumentError(
            "a CuArray cannot be shared with Python under CUDA.jl " *
                "$(pkgversion(CUDA)): DLPack.jl's CUDA support looks for `CUDA.Mem`, which " *
                "CUDA.jl 6 removed. Copy it to the CPU first (Array(a)), or allocate the " *
                "result in torch and write into it (as pydeq's engine does).",
        ))
    end
    return PyDEQ.DLPack.share(a, from_dlpack)
end

end
