"""README's quick start runs as written, and its two commands are the ones CI uses."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_start_runs():
    src = (ROOT / "README.md").read_text()
    block = re.findall(r"```python\n(.*?)```", src, re.S)[0]
    namespace: dict = {}
    exec(compile(block, "README quick start", "exec"), namespace)
    sol = namespace["sol"]
    assert sol.success and sol.backward.ran and sol.backward.nfe > 0


def test_ci_runs_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(python3 -m venv .*?)\n```", readme)
    assert len(commands) >= 2 and "pydeq bench quick" in commands[0] and "pytest" in commands[1]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()
