"""Packaging: the build backend reads pyproject.toml without a deprecation warning (PEP 639 licence
metadata), and the built metadata names the licence and ships its file.

The metadata is built by setuptools' own PEP 517 hook in a fresh interpreter, on a copy of the files the
build reads, so nothing is written into the checkout and no multi-minute install is needed."""

import json
import shutil
import subprocess
import sys
import tomllib
from email.parser import Parser
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

BUILD = """
import json, sys, warnings
import setuptools.build_meta as backend
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    name = backend.prepare_metadata_for_build_wheel(sys.argv[1])
print(json.dumps({"dist_info": name,
                  "warnings": [[w.category.__name__, [c.__name__ for c in w.category.__mro__], str(w.message)]
                               for w in caught]}))
"""


def test_the_build_backend_reads_pyproject_without_deprecation_warnings(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "camri", source / "camri", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "metadata"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", BUILD, str(out)], cwd=source, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    deprecations = [w for w in report["warnings"] if any("Deprecat" in c for c in w[1])]
    assert deprecations == []
    assert "deprecat" not in proc.stderr.lower(), proc.stderr[-3000:]
    metadata = Parser().parsestr((out / report["dist_info"] / "METADATA").read_text())
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert (out / report["dist_info"] / "licenses" / "LICENSE").read_text().startswith("MIT License")


def test_setuptools_bounds_agree():
    # The test extra installs the setuptools that the build needs, so that the test above runs it.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    build = [r for r in pyproject["build-system"]["requires"] if r.startswith("setuptools")]
    test = [r for r in pyproject["project"]["optional-dependencies"]["test"] if r.startswith("setuptools")]
    assert build == test == ["setuptools>=77"]
