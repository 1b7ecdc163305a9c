"""Build hook: the wheel ships the top-level conf/ as the package `morphogen_exp.conf` (the checkout keeps it
at the top; paths.conf_dir finds either). Everything else is declared in pyproject.toml."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["morphogen_exp*"]), "morphogen_exp.conf"])
