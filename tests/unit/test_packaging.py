"""The package as pyproject.toml declares it: every package folder is installed, and the
README stands on its own inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
tomllib = pytest.importorskip("tomllib")


def declared() -> tuple[dict[str, str], list[str]]:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return setuptools["package-dir"], setuptools["packages"]


def folder_of(name: str, package_dir: dict[str, str]) -> Path:
    """Where setuptools looks for package ``name``: its own mapping, else its parent's."""
    if name in package_dir:
        return ROOT / package_dir[name]
    parent, _, leaf = name.rpartition(".")
    return folder_of(parent, package_dir) / leaf


def test_every_package_folder_is_listed_in_pyproject():
    package_dir, packages = declared()
    found = set()
    for name, folder in package_dir.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            found.add(".".join([name, *init.parent.relative_to(ROOT / folder).parts]))
    assert found == set(packages), f"missing {found - set(packages)}, extra {set(packages) - found}"
    for name in packages:
        assert (folder_of(name, package_dir) / "__init__.py").is_file(), name


def test_python_folders_are_packages():
    """A folder of modules without ``__init__.py`` would silently not be installed."""
    package_dir, _ = declared()
    for folder in set(package_dir.values()):
        for py in (ROOT / folder).rglob("*.py"):
            assert (py.parent / "__init__.py").is_file(), f"{py.parent} has no __init__.py"


def test_readme_links_stay_inside_the_repository():
    for target in re.findall(r"\]\(([^)]+)\)", (ROOT / "README.md").read_text()):
        if target.startswith(("http://", "https://", "#")):
            continue
        resolved = (ROOT / target).resolve()
        assert resolved.is_relative_to(ROOT) and resolved.exists(), target
