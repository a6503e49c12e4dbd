# Where each parameter array lives inside the flat vector that torch sends.

"""
    Slot(offset, dims)

One parameter array inside the flat parameter vector: it starts after `offset` entries
(0-based, as Python counts) and has the column-major Julia size `dims`.
"""
struct Slot{N}
    offset::Int
    dims::NTuple{N, Int}
end

Base.length(s::Slot) = prod(s.dims)

"""
    materialize(slots, θ)

Build the Lux parameter `NamedTuple` from the flat vector `θ`, differentiably (Zygote).

## Arguments

  - `slots`: a `NamedTuple` tree of [`Slot`](@ref)s mirroring the Lux parameters.
  - `θ`: the flat parameter vector.

## Returns

A `NamedTuple` with the structure of `slots` whose leaves are the slices of `θ`.
"""
function materialize(slots::Slot, θ::AbstractVector)
    # a copy (getindex), not a view: dense arrays keep BLAS/cuDNN paths and SciMLSensitivity's
    # parameter handling simple; the cost is one pass over the parameters per call
    return reshape(θ[(slots.offset + 1):(slots.offset + length(slots))], slots.dims)
end
function materialize(slots::NamedTuple, θ::AbstractVector)
    return NamedTuple{keys(slots)}(map(c -> materialize(c, θ), values(slots)))
end

"""
    check_layout(template, slots, path = "ps")

Throw an `ArgumentError` unless `slots` has the keys and array sizes of the Lux parameters
`template`, so a spec that disagrees with the Lux model fails at build time, not mid-solve.
"""
function check_layout(template::NamedTuple, slots::NamedTuple, path = "ps")
    if keys(template) != keys(slots)
        throw(ArgumentError(
            "parameter layout mismatch at $path: Lux has keys $(keys(template)), " *
                "the spec gave $(keys(slots)); regenerate the spec with pydeq.spec",
        ))
    end
    for k in keys(template)
        check_layout(template[k], slots[k], "$path.$k")
    end
    return nothing
end

function check_layout(template::AbstractArray, slot::Slot, path = "ps")
    if size(template) != slot.dims
        throw(ArgumentError(
            "parameter layout mismatch at $path: Lux expects size $(size(template)), " *
                "the spec gave $(slot.dims)",
        ))
    end
    return nothing
end

function check_layout(template, slots, path = "ps")
    throw(ArgumentError("parameter layout mismatch at $path: unexpected $(typeof(slots))"))
end

"""
    per_sample(u)

`u` as a matrix with one column per sample (the batch is the last dimension).
"""
per_sample(u::AbstractArray) = reshape(u, :, size(u, ndims(u)))

# per-sample norms of a matrix's columns, named as in pydeq (`pydeq.l2_norm`, `rms_norm`, `max_norm`)
sample_l2(flat::AbstractMatrix) = vec(sqrt.(sum(abs2, flat; dims = 1)))
sample_rms(flat::AbstractMatrix) = sample_l2(flat) ./ sqrt(max(size(flat, 1), 1))
sample_max(flat::AbstractMatrix) = vec(maximum(abs, flat; dims = 1))

const NORMS = Dict{String, Function}(
    "l2" => sample_l2,
    "rms" => sample_rms,
    "max" => sample_max,
)

"""
    BatchMax(sample_norm)

Termination norm: the largest per-sample norm over the batch. NonlinearSolve's
`NormTerminationMode` applies it to the residual `r = f(z) - z` and to `r + z = f(z)`, so the
whole batch stops once `maximum_b norm(r_b) ≤ abstol` or
`maximum_b norm(r_b) ≤ reltol · maximum_b norm(f(z_b))`: one verdict for the batch, where
pydeq's native solvers judge and stop each sample on its own.
"""
struct BatchMax{F}
    sample_norm::F
end
(n::BatchMax)(u::AbstractArray) = maximum(n.sample_norm(per_sample(u)))
(::BatchMax)(u::Number) = abs(u)

"""
    sample_norms!(out, sample_norm, r)

Write `sample_norm` of each sample of `r` (batch is the last dimension) into `out`.
"""
function sample_norms!(out::AbstractVector, sample_norm, r::AbstractArray)
    out .= sample_norm(per_sample(r))
    return out
end
