"""What a config chooses: options as enums (a value that is not a member fails when the config is composed,
naming the key and the members, so no algorithm has to check its string choices), and components as classes
named by ``_target_`` (a config group per kind, one YAML file per class)."""
from __future__ import annotations

from dataclasses import fields
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


def component_key(component) -> dict:
    """A configured component (a dataclass chosen by ``_target_``) as a stage's cache key holds it: its class and
    the fields that change its results (a field with ``metadata={"key": False}`` does not)."""
    cls = type(component)
    return {"class": f"{cls.__module__}.{cls.__qualname__}",
            **{f.name: getattr(component, f.name) for f in fields(component) if f.metadata.get("key", True)}}
