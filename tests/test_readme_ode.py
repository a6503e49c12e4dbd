"""README's neural-ODE example runs as written and its printed numbers hold."""

import math
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_neural_ode_example_runs():
    src = (ROOT / "README.md").read_text()
    section = src.split("### Neural ODEs: output times, events, checkpointed gradients, a torchdiffeq drop-in")[1]
    block = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    namespace: dict = {}
    exec(compile(block, "README neural-ODE example", "exec"), namespace)
    assert abs(float(namespace["t_hit"].detach()) - math.sqrt(2 / 9.81)) < 1e-6
    assert abs(float(namespace["dt_dh"][0, 0]) - 1 / math.sqrt(2 * 9.81)) < 1e-5
