"""README.md's section on building one's own network runs as written."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_own_network_section_runs():
    text = README.read_text()
    section = text.split("## Using the BNTT layer in your own network", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 3
    scope = {}
    exec("\n".join(blocks), scope)  # noqa: S102: the repository's own documentation
    assert scope["logits"].shape == (8, 10)
    assert scope["s"].shape == (8, 16, 28, 28)
    net = scope["net"]
    assert all(p.grad is not None for p in net.parameters())
    assert net.backend.name == ("fused" if torch.cuda.is_available() else "cpu")
