"""ccsr: content-consistent diffusion super-resolution (CCSR-v2) on diffusers.

Importing ``ccsr`` is cheap; heavy modules load on first use of ``ccsr.CCSRPipeline``.
"""

from __future__ import annotations

from ccsr.quiet import quiet_libraries

__version__ = "0.1.0"
__all__ = ["CCSRPipeline", "CCSRPipelineOutput", "__version__"]


quiet_libraries()  # library chatter that is noise to users (ccsr.quiet); CCSR_VERBOSE=1 keeps it


def __getattr__(name: str):
    if name in ("CCSRPipeline", "CCSRPipelineOutput"):
        from ccsr import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'ccsr' has no attribute {name!r}")
