# Type stub for the CFFI extension module built by build_ffi.py (API mode).
# ``ffi`` is the module's cffi.FFI instance and ``lib`` its library object,
# whose attributes are the C functions and constants of include/pyquant.h;
# CFFI generates both at build time, so they are typed as Any here.
from typing import Any

ffi: Any
lib: Any
