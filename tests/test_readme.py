"""The README's usage example runs (on the CPU here: "cuda" is replaced by the available device)."""

import pathlib
import re

import torch


def test_readme_usage_example_runs():
    text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    usage = text.split("## Usage", 1)[1]
    code = re.search(r"```python\n(.*?)```", usage, re.S).group(1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    scope: dict = {}
    exec(code.replace('"cuda"', f'"{device}"'), scope)
    B, T, k, H, D = (scope[name] for name in ("B", "T", "k", "H", "D"))
    assert scope["out"].shape == (B * T, H, D) and torch.isfinite(scope["out"].float()).all()
