"""Checks that follow from the config schema itself, for every field at once.

The dataclasses (launcher/config.py ``JobConfig`` and the schemas it nests) say each
field's type; these checks make the type mean what a user expects of it:

- an override names a real key: an unknown one is refused with the closest real key and
  the keys of its group (``checkpoint.Every`` -> ``checkpoint.every``);
- a group choice (``model=``, ``precision=``, ``objective=``) is one preset name, not
  null or a list;
- a boolean is written ``true`` or ``false`` (Hydra would read ``2`` as true);
- a number is finite: no field of the schema means anything at NaN or infinity.

Each component's own ``validate`` then checks its domain (ranges, choices, cross-field
rules).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing

GROUPS = ("model", "precision", "objective")


def check_overrides(overrides: list[str], schema: type, *, presets: dict[str, list[str]]
                    ) -> None:
    """Raise ValueError for the first override that names no schema key, a group choice
    that is not one preset name, or a boolean that is not true/false."""
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if key.split(".")[0].split("/")[0] == "hydra":
            continue  # Hydra's own settings
        if not sep and not override.startswith("~"):
            raise ValueError(f"override '{override}' has no '='; write key=value")
        if key in GROUPS:
            _check_choice(key, value, presets.get(key, []))
            continue
        field_type = _field_type(schema, key.split("."))
        if field_type is bool and value.strip().lower() not in ("true", "false"):
            raise ValueError(f"{key}={value} must be true or false")


def _check_choice(group: str, value: str, presets: list[str]) -> None:
    name = value.strip()
    if not name or name.lower() == "null" or name.startswith(("[", "{")) or "," in name:
        raise ValueError(f"{group}={value} must be one preset name: {', '.join(presets)}")


def _field_type(schema: type, parts: list[str]):
    """The type of the field at ``parts`` under dataclass ``schema``; ValueError naming the
    closest real key when there is none."""
    node, path = schema, []
    for part in parts:
        if not dataclasses.is_dataclass(node):
            return None  # inside a dict or list field: its own code checks the contents
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            where = ".".join(path) or "the config"
            close = difflib.get_close_matches(part, fields, n=1, cutoff=0.5)
            hint = f"did you mean {'.'.join([*path, close[0]])}? " if close else ""
            raise ValueError(f"unknown key {'.'.join([*path, part])}; {hint}"
                             f"{where} has: {', '.join(sorted(fields))}")
        node = typing.get_type_hints(node)[part]
        path.append(part)
    return node


def check_finite(obj, prefix: str = "") -> None:
    """Raise ValueError naming the first float (or float in a list) that is NaN or inf."""
    for f in dataclasses.fields(obj):
        value, name = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_finite(value, name + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}({value}) must be a finite number")
        elif isinstance(value, list | tuple) and any(
                isinstance(v, float) and not math.isfinite(v) for v in value):
            raise ValueError(f"{name}({list(value)}) must hold finite numbers")
