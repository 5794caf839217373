"""Statements of what reproduces are quoted from the generated claims.md (and table1.md) files, never typed: every
``<!-- claims: PATH -->`` block in the README and docs/ must equal what ``camri.claims.quote_claims`` writes
from PATH (refresh with ``python -m camri.claims --quote README.md docs/*.md``)."""

from pathlib import Path

import pytest

from camri import claims, sweep
from camri.profile import load_profile

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_quoted_claims_agree_with_their_files(document):
    text = document.read_text(encoding="utf-8")
    assert claims.quote_claims(text, REPO) == text, (
        f"{document.name} quotes a claims.md that has changed: run `python -m camri.claims --quote "
        f"{document.relative_to(REPO)}`"
    )


def test_the_readme_quotes_a_claims_file():
    assert "<!-- claims: " in (REPO / "README.md").read_text(encoding="utf-8")


COMMITTED_PROFILES = sorted((REPO / "results").glob("*/*.yaml"))


@pytest.mark.parametrize("path", COMMITTED_PROFILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_profiles_still_load(path):
    # The docs give `camri reproduce --profile results/...yaml` for each: a change to the profile format
    # or TrainConfig must keep the committed evidence's profiles valid (or update them).
    profile = load_profile(path)
    assert sweep.expand(profile, "baseline", results_dir=path.parent.parent)
