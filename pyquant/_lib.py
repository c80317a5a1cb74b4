"""Loads the CFFI extension and refuses a native library of another version.

Everything else in the package reaches the C ABI through ``ffi`` and ``lib``
from here.
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["ffi", "lib", "check_native_version"]

try:
    from ._native import ffi, lib
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "pyquant's native extension (pyquant._native) is missing or failed to load: "
        f"{exc}. Install the package with `pip install .` from the source tree, "
        "which builds the Rust library and the extension."
    ) from exc


def check_native_version(native_version: str, native_abi: int, header_abi: int) -> None:
    """Raises ImportError unless the native library matches this package."""
    if native_version != __version__:
        raise ImportError(
            f"pyquant {__version__} found native library version {native_version}: "
            "the extension is stale or from another install; rebuild with `pip install .`"
        )
    if native_abi != header_abi:
        raise ImportError(
            f"pyquant's native library implements ABI {native_abi} but was compiled "
            f"against header ABI {header_abi}; rebuild with `pip install .`"
        )


check_native_version(ffi.string(lib.pq_version()).decode(), lib.pq_abi_version(), lib.PQ_ABI_VERSION)
