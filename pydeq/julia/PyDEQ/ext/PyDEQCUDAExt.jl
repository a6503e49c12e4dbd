"""
    PyDEQCUDAExt

Loaded when CUDA.jl is: torch CUDA tensors then arrive as `CuArray`s (DLPack.jl's own CUDA
extension does the wrapping) and every entry point waits for CUDA.jl's queued work before it
returns to Python.
"""
module PyDEQCUDAExt

using CUDA: CUDA, CuArray
using PyDEQ: PyDEQ

PyDEQ.synchronize(::CuArray) = CUDA.synchronize()

end
