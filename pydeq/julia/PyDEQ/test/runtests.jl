# Checks the engine against the closed form of a linear DEQ:
# z* = W z* + U x + b  =>  z* = (I - W)⁻¹ (U x + b), and for a cotangent g with
# w = (I - W)⁻ᵀ g: ∂x = Uᵀ w, ∂W = w z*ᵀ, ∂U = w xᵀ, ∂b = Σ_batch w.
using LinearAlgebra: I
using PyDEQ
using Random: Xoshiro
using Test

function linear_spec(n, m; kind = "DEQ", solver = "NewtonRaphson")
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
     "abstol": 1e-12, "reltol": 1e-12, "maxiters": 200,
     "adjoint": {"abstol": 1e-12, "reltol": 1e-12, "maxiters": 200}}
    """
end

@testset "PyDEQ" begin
    n, m, batch = 4, 3, 5
    rng = Xoshiro(0)
    W = 0.3 .* randn(rng, n, n) ./ sqrt(n)
    U = randn(rng, n, m)
    b = randn(rng, n)
    θ = vcat(vec(W), vec(U), b)
    x = randn(rng, m, batch)
    zref = (I - W) \ (U * x .+ b)

    @testset "forward, $solver" for solver in ("NewtonRaphson", "Broyden")
        h = build(linear_spec(n, m; solver))
        z = zeros(n, batch)
        r = zeros(batch)
        nfe = forward!(z, r, h, x, θ)
        @test z ≈ zref atol = 1.0e-9
        @test all(r .< 1.0e-9)
        @test nfe > 0
        @test release(h)
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

    @testset "float32" begin
        h = build(linear_spec(n, m))
        z = zeros(Float32, n, batch)
        forward!(z, zeros(Float32, batch), h, Float32.(x), Float32.(θ))
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
