"""Package discovery for the wheel (everything else is in pyproject.toml): every package under synctalk/,
found rather than listed, plus the configs in conf/, shipped as the synctalk.conf package."""
from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["synctalk", "synctalk.*"]), "synctalk.conf"],
      package_dir={"synctalk.conf": "conf"})
