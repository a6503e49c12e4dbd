"""
    PyDEQ

Julia engine behind pydeq's `backend="julia"`: builds DeepEquilibriumNetworks.jl models from
the declarative spec that `pydeq.spec` writes, and runs forward solves and implicit-adjoint
vector-Jacobian products on arrays that Python allocated. Models live here behind integer
handles; parameters stay owned by torch and arrive as one flat vector on every call.
"""
module PyDEQ

using DeepEquilibriumNetworks: DeepEquilibriumNetwork, SkipDeepEquilibriumNetwork
using DLPack: DLPack
using JSON: JSON
using Lux: Chain, Conv, Dense, GroupNorm, Parallel, SkipConnection, WrappedFunction
using LuxCore: LuxCore, AbstractLuxLayer
using NNlib: NNlib
using NonlinearSolve:
    Broyden,
    KrylovJL_GMRES,
    LimitedMemoryBroyden,
    NewtonRaphson,
    NormTerminationMode
# the two solver sub-packages, not OrdinaryDiffEq, which loads every solver family
using OrdinaryDiffEqLowOrderRK: BS3, DP5
using OrdinaryDiffEqTsit5: Tsit5
using PrecompileTools: @compile_workload, @setup_workload
using Random: AbstractRNG, Xoshiro
using SciMLBase: SciMLBase
using SciMLSensitivity: SteadyStateAdjoint, ZygoteVJP
using Zygote: Zygote

include("layout.jl")
include("spec.jl")
include("engine.jl")
include("python.jl")
include("precompile.jl")

export build, forward!, vjp!, release, model_from_spec, num_handles

end
