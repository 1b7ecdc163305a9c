"""Build hook: the wheel ships the top-level conf/ as the package `morphogen_exp.conf` (the checkout keeps it
at the top; paths.conf_dir finds either), and a BUILD_COMMIT file naming the commit it was built from (what
tracking.code_version reports for an installed wheel, which has no git checkout). Everything else is declared in
pyproject.toml."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from setuptools import find_namespace_packages, find_packages, setup
from setuptools.command.build_py import build_py

STAMP = "BUILD_COMMIT"


def commit_stamp(root: Path) -> str | None:
    """`git rev-parse HEAD` of root, with +dirty.<digest> when morphogen_exp/ or conf/ differ from it (the same
    string code_version gives in that checkout); None when root is no git checkout."""
    def git(*args: str) -> bytes:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=True).stdout

    try:
        head = git("rev-parse", "HEAD").decode().strip()
        diff = git("diff", "HEAD", "--", "morphogen_exp", "conf")
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty." + hashlib.sha256(diff).hexdigest()[:8] if diff else "")


class StampedBuild(build_py):
    """build_py that also writes morphogen_exp/BUILD_COMMIT into the built package (when built from a checkout)."""

    def run(self) -> None:
        super().run()
        stamp = commit_stamp(Path(__file__).resolve().parent)
        if stamp and not self.editable_mode:  # an editable install runs from the checkout: git answers there
            target = Path(self.build_lib) / "morphogen_exp" / STAMP
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(stamp + "\n")


if __name__ == "__main__":  # setuptools' build backend runs this file as __main__; tests import commit_stamp
    conf = ["morphogen_exp.conf", *(f"morphogen_exp.conf.{p}" for p in find_namespace_packages("conf"))]  # its folders too
    setup(packages=[*find_packages(include=["morphogen_exp*"]), *conf], cmdclass={"build_py": StampedBuild})
