"""environment.yml (conda) and pyproject.toml (pip) list the same dependencies with the same bounds."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# conda-forge / pytorch channel names of PyPI packages whose names differ.
CONDA_NAME = {"pytorch": "torch"}


def _split(requirement: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement)
    return match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip = dict(_split(r) for r in project["dependencies"] + project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {}
    for entry in env["dependencies"]:
        name, spec = _split(entry.replace("=", "==", 1) if re.match(r"^[\w\-]+=[^=<>]", entry) else entry)
        if name == "python":
            continue
        conda[CONDA_NAME.get(name, name)] = spec
    assert conda == pip


def test_torch_bounds_admit_the_development_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = dict(_split(r) for r in project["dependencies"])
    from packaging.specifiers import SpecifierSet

    assert "2.14.1" in SpecifierSet(specs["torch"])
    assert "0.29.1" in SpecifierSet(specs["torchvision"])


def test_environment_yml_resolves_from_conda_forge_only():
    # The pytorch channel stopped at 2.5 (pytorch/pytorch#138506); conda-forge builds the current versions.
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"][0] == "conda-forge"
    assert "pytorch" not in env["channels"] and "defaults" not in env["channels"]
