"""The one check for names chosen from a fixed set: architectures, datasets, engines."""
from __future__ import annotations


def check_name(kind: str, name: str, choices) -> str:
    """`name` if it is one of `choices`, else ValueError("unknown <kind> 'x'; choose from ...")."""
    if name not in choices:
        raise ValueError(f"unknown {kind} {name!r}; choose from {', '.join(choices)}")
    return name
