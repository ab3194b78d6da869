"""Config choices as enums: a value that is not a member fails when the config is composed, naming the key and
the members, so no algorithm has to check its string choices."""
from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A choice among named options (a member's value is its name). It compares equal to, prints (also in
    reprs) and serialises (JSON) as that name, so ``opts.backend == "canonical"`` and ``f"{opts.backend}"`` read as
    plain strings."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    def __repr__(self) -> str:  # as logs print settings dicts: 'auto', not <CropMode.auto: 'auto'>
        return repr(self.value)
