# Checks the engine against the closed form of a linear DEQ:
# z* = W z* + U x + b  =>  z* = (I - W)⁻¹ (U x + b), and for a cotangent g with
# w = (I - W)⁻ᵀ g: ∂x = Uᵀ w, ∂W = w z*ᵀ, ∂U = w xᵀ, ∂b = Σ_batch w.
# Runs from plain Julia (`Pkg.test()`): PyDEQ never loads PythonCall, and the Python entry
# points accept Julia arrays, so no Python is needed.
using LinearAlgebra: I, norm
using PyDEQ
using PyDEQ: py_forward, py_vjp, py_wrap, keep_alive, on_device, share
using PyDEQ: pullback_gradients, copy_gradient!
using Random: Xoshiro
using Test

function linear_spec(
    n,
    m;
    kind = "DEQ",
    solver = "NewtonRaphson",
    tol = 1.0e-12,
    maxiters = 200,
    adjoint_maxiters = 200,
    norm = "l2",
    integration = "null",
)
    nz, nx = n * n, n * m
    return """
    {"format": 1, "kind": "$kind", "num_parameters": $(nz + nx + n),
     "f": {"type": "Injection",
       "z": {"type": "Dense", "in": $n, "out": $n, "bias": false,
             "params": [{"name": "weight", "offset": 0, "dims": [$n, $n]}]},
       "x": {"type": "Dense", "in": $m, "out": $n, "bias": true,
             "params": [{"name": "weight", "offset": $nz, "dims": [$n, $m]},
                        {"name": "bias", "offset": $(nz + nx), "dims": [$n]}]}},
     "init": null, "solver": {"name": "$solver"},
     "abstol": $tol, "reltol": $tol, "maxiters": $maxiters, "norm": "$norm",
     "integration": $integration,
     "adjoint": {"abstol": $tol, "reltol": $tol, "maxiters": $adjoint_maxiters}}
    """
end

# Julia's stopping rule, batch-wide: the worst sample's residual against abstol, or against
# reltol times the largest ‖f(z)‖ = ‖r + z‖ of the batch
function batch_rule(r, z, tol)
    worst = maximum(norm.(eachcol(r)))
    return worst ≤ tol || worst ≤ tol * maximum(norm.(eachcol(r .+ z)))
end

# f(z, x) = GN3(relu(z + GN2(conv2(relu(GN1(conv1(z)))) + x))), the bench's residual conv cell, on
# `c` channels in `groups` groups (Residual, GroupNorm and Conv blocks; parameters in spec order)
function residual_conv_spec(c, groups; solver = "Broyden")
    conv(o) = """{"type": "Conv", "in": $c, "out": $c, "kernel": [3, 3], "stride": [1, 1],
        "pad": [1, 1], "bias": false, "params": [{"name": "weight", "offset": $o,
        "dims": [3, 3, $c, $c]}]}"""
    gn(o) = """{"type": "GroupNorm", "channels": $c, "groups": $groups, "epsilon": 1e-5,
        "params": [{"name": "scale", "offset": $o, "dims": [$c]},
                   {"name": "bias", "offset": $(o + c), "dims": [$c]}]}"""
    k = 9 * c * c
    relu = """{"type": "Activation", "function": "relu"}"""
    inner = """{"type": "Chain", "layers": [$(conv(0)), $(gn(k)), $relu, $(conv(k + 2c))]}"""
    injection = """{"type": "Injection", "z": $inner,
        "x": {"type": "Activation", "function": "identity"}}"""
    residual = """{"type": "Residual", "block": {"type": "Chain",
        "layers": [$injection, $(gn(2k + 2c))]}}"""
    return """
    {"format": 1, "kind": "DEQ", "num_parameters": $(2k + 6c),
     "f": {"type": "Chain", "layers": [$residual, $relu, $(gn(2k + 4c))]},
     "init": null, "solver": {"name": "$solver"},
     "abstol": 1e-6, "reltol": 1e-6, "maxiters": 30,
     "adjoint": {"abstol": 1e-8, "reltol": 1e-8, "maxiters": 50}}
    """
end

# An owner with a finalizer that records its collection, reshaped as DLPack's flat arrays are:
# on Julia ≥ 1.11 the reshaped array alone would not keep the owner reachable
function hold_wrapped!(holder, collected)
    owner = zeros(6)
    finalizer(_ -> (collected[] = true), owner)
    push!(holder, keep_alive(reshape(owner, 2, 3), owner))
    return nothing
end
held_size(holder) = size(only(holder))

@testset "PyDEQ" begin
    n, m, batch = 4, 3, 5
    rng = Xoshiro(0)
    W = 0.3 .* randn(rng, n, n) ./ sqrt(n)
    U = randn(rng, n, m)
    b = randn(rng, n)
    θ = vcat(vec(W), vec(U), b)
    x = randn(rng, m, batch)
    zref = (I - W) \ (U * x .+ b)
    residual(z) = W * z + U * x .+ b - z

    @testset "forward, $solver" for solver in ("NewtonRaphson", "Broyden")
        h = build(linear_spec(n, m; solver))
        z = zeros(n, batch)
        r = zeros(batch)
        stats = forward!(z, r, h, x, θ)
        @test z ≈ zref atol = 1.0e-9
        @test all(r .< 1.0e-9)
        @test r ≈ norm.(eachcol(residual(z))) atol = 1.0e-12
        @test stats.nfe > 0
        @test stats.success && stats.retcode === :Success
        @test batch_rule(residual(z), z, 1.0e-12)
        @test release(h)
    end

    @testset "the spec's norm: $kind" for (kind, sample) in (
            ("rms", c -> norm(c) / sqrt(length(c))),
            ("max", c -> maximum(abs, c)),
        )
        h = build(linear_spec(n, m; solver = "Broyden", maxiters = 3, norm = kind))
        z, r = zeros(n, batch), zeros(batch)
        forward!(z, r, h, x, θ)
        @test r ≈ sample.(eachcol(residual(z))) rtol = 1.0e-10
        release(h)
        @test_throws ArgumentError build(linear_spec(n, m; norm = "l1"))
    end

    @testset "continuous DEQ at its method's integration tolerances" begin
        integration = """{"abstol": 1e-10, "reltol": 1e-10}"""
        spec = linear_spec(
            n,
            m;
            solver = "Tsit5",
            tol = 1.0e-8,
            maxiters = 2000,
            integration,
        )
        h = build(spec)
        z = zeros(n, batch)
        stats = forward!(z, zeros(batch), h, x, θ)
        @test stats.success && stats.retcode === :Success
        @test z ≈ zref atol = 1.0e-6
        @test haskey(PyDEQ.solve_kwargs(PyDEQ.parse_spec(spec)), :odesolve_kwargs)
        @test !haskey(
            PyDEQ.solve_kwargs(PyDEQ.parse_spec(linear_spec(n, m))),
            :odesolve_kwargs,
        )
        release(h)
    end

    @testset "the verdict is the solver's: a capped solve reports failure" begin
        h = build(linear_spec(n, m; solver = "Broyden", maxiters = 1))
        z = zeros(n, batch)
        stats = forward!(z, zeros(batch), h, x, θ)
        @test !stats.success && stats.retcode !== :Success
        @test !batch_rule(residual(z), z, 1.0e-12)
        release(h)
    end

    @testset "vjp through the implicit adjoint" begin
        h = build(linear_spec(n, m))
        z = zeros(n, batch)
        forward!(z, zeros(batch), h, x, θ)
        g = randn(rng, n, batch)
        gx, gθ = zeros(m, batch), zeros(length(θ))
        vjp!(gx, gθ, h, x, θ, z, g)
        w = (I - W)' \ g
        @test gx ≈ U' * w atol = 1.0e-8
        @test gθ[1:(n * n)] ≈ vec(w * zref') atol = 1.0e-8
        @test gθ[(n * n + 1):(n * n + n * m)] ≈ vec(w * x') atol = 1.0e-8
        @test gθ[(end - n + 1):end] ≈ vec(sum(w; dims = 2)) atol = 1.0e-8
        release(h)
    end

    @testset "adjoint limits apply to small states (the state here has 20 entries)" begin
        h = build(linear_spec(n, m; adjoint_maxiters = 1))
        z = zeros(n, batch)
        forward!(z, zeros(batch), h, x, θ)
        g = randn(rng, n, batch)
        gx, gθ = zeros(m, batch), zeros(length(θ))
        vjp!(gx, gθ, h, x, θ, z, g)
        # one GMRES iteration cannot solve the adjoint system; a dense direct solve would
        @test !isapprox(gx, U' * ((I - W)' \ g); atol = 1.0e-6)
        release(h)
    end

    @testset "float32, at tolerances float32 can reach" begin
        h = build(linear_spec(n, m; tol = 1.0e-5))
        z = zeros(Float32, n, batch)
        stats = forward!(z, zeros(Float32, batch), h, Float32.(x), Float32.(θ))
        @test stats.success
        @test z ≈ zref rtol = 1.0e-4
        release(h)
    end

    @testset "skip-reg DEQ reaches the same fixed point" begin
        h = build(linear_spec(n, n; kind = "SkipRegDEQ"))
        Ux = randn(rng, n, n)
        θs = vcat(vec(W), vec(Ux), b)
        xs = randn(rng, n, batch)
        z = zeros(n, batch)
        forward!(z, zeros(batch), h, xs, θs)
        @test z ≈ (I - W) \ (Ux * xs .+ b) atol = 1.0e-9
        release(h)
    end

    @testset "residual conv cell with group norms: layout and residual agree with Lux" begin
        c, groups, batch = 4, 2, 2
        spec = residual_conv_spec(c, groups)
        h = build(spec) # check_layout accepts the Residual/GroupNorm slots
        θc = 0.1 .* randn(rng, 18 * c * c + 6 * c)
        xc = randn(rng, 5, 4, c, batch) # WHCN
        z, r = zeros(5, 4, c, batch), zeros(batch)
        stats = forward!(z, r, h, xc, θc)
        model, slots = PyDEQ.model_from_spec(spec)
        _, st = PyDEQ.LuxCore.setup(Xoshiro(0), model)
        ps = PyDEQ.materialize(slots, θc)
        fz = first(model.model((z, xc), ps.model, st.model))
        @test r ≈ norm.(eachslice(fz - z; dims = 4)) rtol = 1.0e-6
        @test stats.nfe > 0
        release(h)
    end

    @testset "Python entry points on flat arrays with torch shapes" begin
        h = build(linear_spec(n, m))
        zflat, r = zeros(n * batch), zeros(batch)
        nfe, success, retcode = py_forward(h, zflat, r, vec(x), θ, (batch, n), (batch, m))
        @test reshape(zflat, n, batch) ≈ zref atol = 1.0e-9
        @test nfe > 0 && success && retcode == "Success"
        g = randn(rng, n, batch)
        gx, gθ = zeros(m * batch), zeros(length(θ))
        @test py_vjp(h, gx, gθ, vec(x), θ, zflat, vec(g), (batch, n), (batch, m)) ===
            nothing
        @test reshape(gx, m, batch) ≈ U' * ((I - W)' \ g) atol = 1.0e-8
        a = py_wrap(zflat, (batch, n))
        @test size(a) == (n, batch)
        a[1, 1] = 42
        @test zflat[1] == 42 # shares memory
        release(h)
    end

    @testset "a wrapped array keeps its owner alive" begin
        holder, collected = Any[], Ref(false)
        hold_wrapped!(holder, collected) # the only reference to the result is in `holder`
        GC.gc(true)
        GC.gc(true)
        @test !collected[]
        @test held_size(holder) == (2, 3)
        empty!(holder)
        for _ in 1:5
            GC.gc(true)
        end
        @test collected[]
    end

    @testset "devices, gradients that never arrived, sharing" begin
        @test on_device(() -> 7, -1) == 7
        @test_throws ArgumentError on_device(() -> 7, 0) # CUDA.jl is not loaded here
        @test pullback_gradients(nothing, 2) === (nothing, nothing)
        @test pullback_gradients((1, 2), 2) === (1, 2)
        out = ones(3)
        copy_gradient!(out, nothing)
        @test out == zeros(3)
        copy_gradient!(out, [1.0, 2.0, 3.0])
        @test out == [1.0, 2.0, 3.0]
        @test_throws ArgumentError share(1:3, identity)
    end

    @testset "errors teach" begin
        @test_throws ArgumentError build(replace(
            linear_spec(n, m),
            "\"format\": 1" => "\"format\": 2",
        ))
        @test_throws ArgumentError build(replace(
            linear_spec(n, m),
            "Broyden" => "Nope",
            "NewtonRaphson" => "Nope",
        ))
        bad = replace(linear_spec(n, m), "\"dims\": [$n, $m]" => "\"dims\": [$m, $n]")
        @test_throws ArgumentError build(bad)
        h = build(linear_spec(n, m))
        @test_throws ArgumentError forward!(
            zeros(n, batch),
            zeros(batch),
            h,
            x,
            θ[1:(end - 1)],
        )
        release(h)
        @test_throws ArgumentError forward!(zeros(n, batch), zeros(batch), h, x, θ)
        @test num_handles() == 0
    end
end
