"""Build hook: the wheel ships the top-level conf/ as the package `morphogen_exp.conf` (the checkout keeps it
at the top; paths.conf_dir finds either). Everything else is declared in pyproject.toml."""

from setuptools import find_namespace_packages, find_packages, setup

conf = ["morphogen_exp.conf", *(f"morphogen_exp.conf.{p}" for p in find_namespace_packages("conf"))]  # its folders too
setup(packages=[*find_packages(include=["morphogen_exp*"]), *conf])
