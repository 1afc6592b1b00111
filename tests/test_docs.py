"""The README's example spec is a spec hpod accepts: a newcomer copies it first."""

from __future__ import annotations

import re
from pathlib import Path

from hpod.core.spec import StudySpec

ROOT = Path(__file__).resolve().parent.parent


def test_readme_spec_example_is_valid() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README has no toml example"
    spec = StudySpec.from_toml(blocks[0], base_dir=ROOT)
    assert spec.scheduler.type == "asha"
    assert spec.limits.optimization_time == 20 * 60


def test_example_specs_are_valid() -> None:
    specs = sorted((ROOT / "examples").glob("*/*.toml"))
    assert len(specs) >= 4
    for path in specs:
        StudySpec.from_file(path)


def test_docs_link_only_to_files_a_clone_has() -> None:
    """A clone has no steering repository beside it: the design contract is docs/design.md."""
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        assert "../shared" not in text, f"{path.name} links outside the repository"
        for target in re.findall(r"`(docs/[\w.-]+\.md)`", text):
            assert (ROOT / target).is_file(), f"{path.name} names {target}, which does not exist"
