"""Build glue: `pip install .` (or `-e .`) runs the cargo release build of
rust/ and then the CFFI extension build (build_ffi.py), in one step."""

import os
import subprocess

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


class BuildRustThenExt(build_ext):
    def run(self) -> None:
        subprocess.check_call(
            ["cargo", "build", "--release", "--locked", "--lib"],
            cwd=os.path.join(ROOT, "rust"),
        )
        super().run()


setup(
    cffi_modules=["build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": BuildRustThenExt},
)
