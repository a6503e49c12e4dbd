# Handles: models live here, Python holds integers. Every entry point writes into arrays the
# caller allocated (destination passing), so no Julia-owned memory reaches torch.

"""
    WarmStart()

Initial-condition layer that returns the state stored in `st.z0`. Every solve the engine runs
goes through a twin of the spec's model whose `init` is a `WarmStart`: the forward solve starts
from the state its [`Start`](@ref) computes, and the adjoint solve starts from the forward answer
`z*`, so it stops at once and the `SteadyStateAdjoint` pullback is taken at `z*`.
"""
struct WarmStart <: AbstractLuxLayer end

LuxCore.initialstates(::AbstractRNG, ::WarmStart) = (; z0 = nothing)
(::WarmStart)(x, ps, st::NamedTuple) = (st.z0, st)

"""
    Start

How a model picks its initial state `z0`: [`ZeroStart`](@ref) (DEQ), [`SkipRegStart`](@ref)
(Skip Reg DEQ, `z0 = f(0, x)`) or [`LayerStart`](@ref) (Skip DEQ, `z0 = g(x)`). The zeros have
the state's shape (the destination's), which may differ from `x`'s; DeepEquilibriumNetworks.jl
itself starts from `zero(x)`.
"""
abstract type Start end
struct ZeroStart <: Start end
struct SkipRegStart <: Start end
struct LayerStart <: Start end

const STARTS = Dict{String, Start}(
    "DEQ" => ZeroStart(),
    "SkipDEQ" => LayerStart(),
    "SkipRegDEQ" => SkipRegStart(),
)

struct Engine{M, A, S, T, L, P <: Start, N}
    model::M
    adjoint_model::A
    st::S
    adjoint_st::T
    slots::L
    num_parameters::Int
    start::P
    sample_norm::N
end

initial_state(::ZeroStart, e, x, ps, z_out) = (zero(z_out), 0)
function initial_state(::SkipRegStart, e, x, ps, z_out)
    return first(e.model.model((zero(z_out), x), ps.model, e.st.model)), 1
end
function initial_state(::LayerStart, e, x, ps, z_out)
    return first(e.model.init(x, ps.init, e.st.init)), 0
end

"""
    solve_from(e, z0, x, ps)

Run the engine's DEQ from `z0` and return `(z*, solution)`; differentiable with Zygote
through the model's `SteadyStateAdjoint`.
"""
function solve_from(e::Engine, z0, x, ps)
    st = merge(e.adjoint_st, (; init = (; z0)))
    z, st = e.adjoint_model(x, (; model = ps.model, init = NamedTuple()), st)
    return z, st.solution
end

const ENGINES = Dict{Int, Engine}()
const NEXT_HANDLE = Ref(0)
const ENGINES_LOCK = ReentrantLock()

"""
    build(spec; seed = 0)

Build the model a pydeq spec describes and keep it behind a handle.

## Arguments

  - `spec`: the spec's JSON text (or the parsed dictionary).

## Keywords

  - `seed`: seed of the RNG that sets up the Lux states (the parameters come from torch).

## Returns

An `Int` handle for [`forward!`](@ref), [`vjp!`](@ref) and [`release`](@ref).
"""
build(spec::AbstractString; seed::Integer = 0) = build(parse_spec(spec); seed)

function build(spec::AbstractDict; seed::Integer = 0)
    model, slots = model_from_spec(spec)
    template, st = LuxCore.setup(Xoshiro(seed), model)
    check_layout(template, slots)
    n = Int(spec["num_parameters"])
    if n != LuxCore.parameterlength(model)
        throw(ArgumentError(
            "spec declares $n parameters, the Lux model has $(LuxCore.parameterlength(model))",
        ))
    end
    twin = DeepEquilibriumNetwork(
        model.model,
        model.solver;
        init = WarmStart(),
        model.kwargs...,
    )
    _, twin_st = LuxCore.setup(Xoshiro(seed), twin)
    start = lookup(STARTS, spec["kind"], "model kind")
    engine = Engine(model, twin, st, twin_st, slots, n, start, sample_norm(spec))
    return lock(ENGINES_LOCK) do
        NEXT_HANDLE[] += 1
        ENGINES[NEXT_HANDLE[]] = engine
        NEXT_HANDLE[]
    end
end

function engine(handle::Integer)
    return lock(ENGINES_LOCK) do
        haskey(ENGINES, handle) && return ENGINES[handle]
        throw(ArgumentError(
            "no model behind handle $handle: it was released or never built",
        ))
    end
end

"""
    release(handle)

Forget the model behind `handle`. Returns `true` if there was one.
"""
function release(handle::Integer)
    return lock(ENGINES_LOCK) do
        pop!(ENGINES, handle, nothing) !== nothing
    end
end

"""
    num_handles()

Number of live models (for leak checks in tests).
"""
num_handles() = lock(() -> length(ENGINES), ENGINES_LOCK)

function check_params(e::Engine, θ::AbstractVector)
    if length(θ) != e.num_parameters
        throw(ArgumentError("expected $(e.num_parameters) parameters, got $(length(θ))"))
    end
    return nothing
end

"""
    forward!(z_out, residual_out, handle, x, θ)

Solve for the equilibrium of the model behind `handle` and write it into `z_out`.

## Arguments

  - `z_out`: destination for `z*`, size `(state..., batch)`.
  - `residual_out`: destination for `norm(f(z*, x) - z*)` per sample (the spec's norm),
    length `batch`.
  - `handle`: from [`build`](@ref).
  - `x`: input, size `(features..., batch)`.
  - `θ`: flat parameter vector in the spec's layout.

## Returns

`(; nfe, success, retcode)`: the function evaluations the solve used, whether it met its
stopping rule (`SciMLBase.successful_retcode`) and the solver's return code as a `Symbol`.
The rule is the batch's, not each sample's: the solve stops once
`maximum_b norm(r_b) ≤ abstol` or `maximum_b norm(r_b) ≤ reltol · maximum_b norm(r_b + z_b)`
([`BatchMax`](@ref), `r = f(z, x) - z`), so `success` is one verdict for the batch.
"""
function forward!(
    z_out::AbstractArray,
    residual_out::AbstractVector,
    handle::Integer,
    x::AbstractArray,
    θ::AbstractVector,
)
    e = engine(handle)
    check_params(e, θ)
    ps = materialize(e.slots, θ)
    z0, nfe0 = initial_state(e.start, e, x, ps, z_out)
    z, solution = solve_from(e, z0, x, ps)
    copyto!(z_out, z)
    sample_norms!(residual_out, e.sample_norm, solution.residual)
    retcode = solution.original.retcode
    return (;
        nfe = solution.nfe + nfe0,
        success = SciMLBase.successful_retcode(retcode),
        retcode = Symbol(retcode),
    )
end

"""
    vjp!(gx_out, gθ_out, handle, x, θ, z_star, gz)

Vector-Jacobian product of `z*(x, θ)` through the implicit adjoint: with `w` solving
`(I - ∂f/∂z)ᵀ w = gz` at `z*`, write `(∂f/∂x)ᵀ w` into `gx_out` and `(∂f/∂θ)ᵀ w` into `gθ_out`.

## Arguments

  - `gx_out`, `gθ_out`: destinations, sized like `x` and `θ`.
  - `handle`, `x`, `θ`: as for [`forward!`](@ref).
  - `z_star`: the answer [`forward!`](@ref) returned.
  - `gz`: the cotangent of `z*`.

## Returns

`nothing`; the gradients are in the destinations.
"""
function vjp!(
    gx_out::AbstractArray,
    gθ_out::AbstractVector,
    handle::Integer,
    x::AbstractArray,
    θ::AbstractVector,
    z_star::AbstractArray,
    gz::AbstractArray,
)
    e = engine(handle)
    check_params(e, θ)
    function solve_from_answer(x, θ)
        return first(solve_from(e, z_star, x, materialize(e.slots, θ)))
    end
    _, back = Zygote.pullback(solve_from_answer, x, θ)
    gx, gθ = pullback_gradients(back(gz), 2)
    copy_gradient!(gx_out, gx)
    copy_gradient!(gθ_out, gθ)
    return nothing
end

"""
    pullback_gradients(grads, n)

The `n` gradients a Zygote pullback returned: `grads` itself, or `n` `nothing`s when the
pullback returned `nothing` (Zygote's answer when no argument received a gradient).
"""
pullback_gradients(grads::Tuple, n::Integer) = grads
pullback_gradients(::Nothing, n::Integer) = ntuple(Returns(nothing), n)

"""
    copy_gradient!(out, g)

Write the gradient `g` into `out`; `nothing` (no gradient reached that argument) writes zeros.
"""
copy_gradient!(out::AbstractArray, g) = copyto!(out, g)
copy_gradient!(out::AbstractArray, ::Nothing) = fill!(out, false)
