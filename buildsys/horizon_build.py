"""PEP 517 build backend: setuptools', plus what a compiled build (HORIZON_SIDECAR_COMPILE=1) needs.

mypyc type-checks the modules it compiles against the libraries they import, so a compiled build needs mypy
and the project's runtime dependencies in its (isolated) build environment; a plain build needs neither, and
gets neither. Everything else is setuptools' own backend (setup.py says what is compiled: decision 0008).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from setuptools.build_meta import *  # noqa: F403  # the rest of the PEP 517 interface, unchanged

# The mypy that compiles (mypyc ships with it); the upper bound keeps a new major release from changing
# what an image build does without a commit here.
MYPYC = "mypy>=1.10,<3"


def _compile_requires() -> list[str]:
    if os.environ.get("HORIZON_SIDECAR_COMPILE", "0") != "1":
        return []
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    # types-PyYAML: the config package imports yaml, and the compiled modules' imports reach it.
    return [MYPYC, "types-PyYAML", *project["dependencies"]]


# setuptools' own versions of these two run setup.py to find `setup_requires` (this project has none), and
# setup.py would then import mypyc before it is installed: the requirements are stated here instead.
def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return ["wheel", *_compile_requires()]


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return ["wheel", *_compile_requires()]
