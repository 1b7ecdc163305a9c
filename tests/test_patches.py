"""Work kept as patches (docs/patches: written, not yet run on a GPU) must still apply to this tree, so the
device stage that applies one (scripts/device_matrix.sh wide) never spends a call on a patch that has rotted."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATCHES = sorted((REPO / "docs" / "patches").glob("*.mbox"))


def test_the_patches_folder_lists_every_patch() -> None:
    readme = (REPO / "docs" / "patches" / "README.md").read_text()
    assert PATCHES and all(f"[{p.name}]({p.name})" in readme for p in PATCHES)


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.name)
def test_each_kept_patch_applies_to_this_tree(patch: Path) -> None:
    git = shutil.which("git")
    assert git, "git is needed to check the kept patches"
    res = subprocess.run([git, "apply", "--check", str(patch)], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, f"{patch.name} no longer applies: rebase it (git am, fix, git format-patch)\n{res.stderr[-2000:]}"
