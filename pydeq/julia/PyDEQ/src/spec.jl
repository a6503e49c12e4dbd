# Spec (the JSON that `pydeq.spec` writes) -> Lux layers and parameter slots.
# Shapes in the spec are already in Julia order: Python reverses torch's dimensions.

const ACTIVATIONS = Dict{String, Function}(
    "tanh" => tanh,
    "relu" => NNlib.relu,
    "sigmoid" => NNlib.sigmoid,
    "softplus" => NNlib.softplus,
    "identity" => identity,
)

const SOLVERS = Dict{String, Function}(
    "Broyden" => () -> Broyden(),
    "LimitedMemoryBroyden" => () -> LimitedMemoryBroyden(),
    "NewtonRaphson" => () -> NewtonRaphson(),
    "NewtonKrylov" => () -> NewtonRaphson(; linsolve = KrylovJL_GMRES()),
    "Tsit5" => () -> Tsit5(),
    "DP5" => () -> DP5(),
    "BS3" => () -> BS3(),
)

function lookup(table::Dict, key, what::AbstractString)
    haskey(table, key) && return table[key]
    known = join(sort!(collect(keys(table))), ", ")
    throw(ArgumentError("unknown $what $(repr(key)); this engine knows: $known"))
end

slots_of(d) = (; (
    Symbol(p["name"]) => Slot(Int(p["offset"]), ints(p["dims"]))
    for p in d["params"]
)...)

ints(v) = Tuple(Int.(v))

function dense_block(d)
    layer = Dense(Int(d["in"]) => Int(d["out"]); use_bias = Bool(d["bias"]))
    return layer, slots_of(d)
end

function conv_block(d)
    layer = Conv(
        ints(d["kernel"]),
        Int(d["in"]) => Int(d["out"]);
        stride = ints(d["stride"]),
        pad = ints(d["pad"]),
        use_bias = Bool(d["bias"]),
    )
    return layer, slots_of(d)
end

function activation_block(d)
    σ = lookup(ACTIVATIONS, d["function"], "activation")
    return WrappedFunction(Base.Fix1(broadcast, σ)), NamedTuple()
end

function group_norm_block(d)
    layer = GroupNorm(Int(d["channels"]), Int(d["groups"]); epsilon = Float64(d["epsilon"]))
    return layer, slots_of(d)
end

"""
    add_state(out, zx)

The connection of a residual block: `out + z`, where the block received the tuple `(z, x)`.
"""
add_state(out, zx::Tuple) = out .+ first(zx)

function residual_block(d)
    inner, slots = block(d["block"])
    # a SkipConnection whose connection is a function has exactly its block's parameters
    return SkipConnection(inner, add_state), slots
end

layer_names(n) = ntuple(i -> Symbol(:layer_, i), n)

function chain_block(d)
    built = map(block, d["layers"])
    slots = NamedTuple{layer_names(length(built))}(Tuple(last.(built)))
    return Chain(first.(built)...), slots
end

function injection_block(d)
    zl, zs = block(d["z"])
    xl, xs = block(d["x"])
    return Parallel(+, zl, xl), (; layer_1 = zs, layer_2 = xs)
end

const BLOCKS = Dict{String, Function}(
    "Dense" => dense_block,
    "Conv" => conv_block,
    "GroupNorm" => group_norm_block,
    "Activation" => activation_block,
    "Chain" => chain_block,
    "Injection" => injection_block,
    "Residual" => residual_block,
)

"""
    block(d)

Translate one building block of the spec into a Lux layer.

## Arguments

  - `d`: a dictionary with a `"type"` entry (`Dense`, `Conv`, `GroupNorm`, `Activation`,
    `Chain`, `Injection`, `Residual`) and that block's fields.

## Returns

`(layer, slots)`: the Lux layer and the [`Slot`](@ref) tree of its parameters.
"""
block(d) = lookup(BLOCKS, d["type"], "block type")(d)

"""
    solve_kwargs(spec)

Keyword arguments forwarded by the DEQ layer to `solve`: tolerances, the termination norm
([`BatchMax`](@ref) of the spec's per-sample norm), and a `SteadyStateAdjoint` whose linear
solve uses the spec's adjoint tolerances.

The adjoint's linear solver is named (Krylov.jl's GMRES): left unset, SciMLSensitivity builds
a dense Jacobian for states of at most 50 entries (the whole `(state..., batch)` array) and
solves it with LinearSolve's default direct method, which ignores `linsolve_kwargs`. Named,
the matrix-free operator is used at every size, so the tolerances always apply.
"""
function solve_kwargs(spec)
    adj = spec["adjoint"]
    linsolve_kwargs = (;
        abstol = Float64(adj["abstol"]), reltol = Float64(adj["reltol"]),
        maxiters = Int(adj["maxiters"]),
    )
    kw = (;
        abstol = Float64(spec["abstol"]), reltol = Float64(spec["reltol"]),
        maxiters = Int(spec["maxiters"]),
        termination_condition = NormTerminationMode(BatchMax(sample_norm(spec))),
        sensealg = SteadyStateAdjoint(;
            autojacvec = ZygoteVJP(),
            linsolve = KrylovJL_GMRES(),
            linsolve_kwargs,
        ),
    )
    integration = get(spec, "integration", nothing)
    integration === nothing && return kw
    # a continuous DEQ integrates at its method's tolerances: `DynamicSS` passes `odesolve_kwargs`
    # to the ODE solve after (so in place of) the termination tolerances
    odesolve_kwargs = (;
        abstol = Float64(integration["abstol"]), reltol = Float64(integration["reltol"]),
    )
    return (; kw..., odesolve_kwargs)
end

solver(d) = lookup(SOLVERS, d["name"], "solver")()

# the per-sample norm of the termination test; specs written before pydeq had norms used "l2"
sample_norm(spec) = lookup(NORMS, get(spec, "norm", "l2"), "norm")

function plain_deq(spec, f, fslots, alg, kw)
    return DeepEquilibriumNetwork(f, alg; kw...), (; model = fslots, init = NamedTuple())
end

function skip_deq(spec, f, fslots, alg, kw)
    g, gslots = block(spec["init"])
    return SkipDeepEquilibriumNetwork(f, g, alg; kw...), (; model = fslots, init = gslots)
end

function skipreg_deq(spec, f, fslots, alg, kw)
    return SkipDeepEquilibriumNetwork(f, alg; kw...),
        (; model = fslots, init = NamedTuple())
end

const KINDS = Dict{String, Function}(
    "DEQ" => plain_deq,
    "SkipDEQ" => skip_deq,
    "SkipRegDEQ" => skipreg_deq,
)

"""
    model_from_spec(spec)

Build the DeepEquilibriumNetworks.jl layer that a pydeq spec describes.

## Arguments

  - `spec`: the parsed spec (a dictionary) or its JSON text.

## Returns

`(model, slots)`: the Lux layer (`DeepEquilibriumNetwork` or `SkipDeepEquilibriumNetwork`)
and the [`Slot`](@ref) tree that maps the flat torch parameter vector onto its parameters.
"""
model_from_spec(spec::AbstractString) = model_from_spec(parse_spec(spec))

parse_spec(spec::AbstractString) = JSON.parse(spec; dicttype = Dict{String, Any})

function model_from_spec(spec::AbstractDict)
    format = get(spec, "format", nothing)
    if format != 1
        throw(ArgumentError(
            "spec format $(repr(format)) is not 1: upgrade pydeq and PyDEQ together",
        ))
    end
    f, fslots = block(spec["f"])
    alg = solver(spec["solver"])
    kind = lookup(KINDS, spec["kind"], "model kind")
    return kind(spec, f, fslots, alg, solve_kwargs(spec))
end
