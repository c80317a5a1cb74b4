"""Build glue: `pip install .` (or `-e .`) runs the cargo release build of
rust/ and then the CFFI extension build (build_ffi.py), in one step.
PYQUANT_CARGO_FEATURES (e.g. `test-ffi`, as test.sh sets it) selects cargo
features; build_ffi.py reads the same variable."""

import os
import subprocess

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


class BuildRustThenExt(build_ext):
    def run(self) -> None:
        features = os.environ.get("PYQUANT_CARGO_FEATURES", "").strip()
        subprocess.check_call(
            ["cargo", "build", "--release", "--locked", "--lib", *(["--features", features] if features else [])],
            cwd=os.path.join(ROOT, "rust"),
        )
        super().run()


setup(
    cffi_modules=["build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": BuildRustThenExt},
)
