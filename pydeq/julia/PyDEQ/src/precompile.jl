# Compile the entry points at package precompile time so the first call from Python does not
# pay for inference of the solve and the adjoint (seconds to minutes otherwise).

const WORKLOAD_SPEC = """
{"format": 1, "kind": "DEQ", "num_parameters": 10,
 "f": {"type": "Chain", "layers": [
   {"type": "Injection",
    "z": {"type": "Dense", "in": 2, "out": 2, "bias": false,
          "params": [{"name": "weight", "offset": 0, "dims": [2, 2]}]},
    "x": {"type": "Dense", "in": 2, "out": 2, "bias": true,
          "params": [{"name": "weight", "offset": 4, "dims": [2, 2]},
                     {"name": "bias", "offset": 8, "dims": [2]}]}},
   {"type": "Activation", "function": "tanh"}]},
 "init": null, "solver": {"name": "Broyden"},
 "abstol": 1e-6, "reltol": 1e-6, "maxiters": 50,
 "adjoint": {"abstol": 1e-8, "reltol": 1e-8, "maxiters": 50}}
"""

@setup_workload begin
    @compile_workload begin
        h = build(WORKLOAD_SPEC)
        for T in (Float32, Float64)
            θ = T[0.1, 0, 0, 0.1, 1, 0, 0, 1, 0, 0]
            x = ones(T, 2, 3)
            z = similar(x)
            r = zeros(T, 3)
            forward!(z, r, h, x, θ)
            vjp!(similar(x), similar(θ), h, x, θ, z, ones(T, 2, 3))
        end
        release(h)
    end
end
