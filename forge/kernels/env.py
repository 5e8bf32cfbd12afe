"""Environment switches the kernel modules share, parsed one way."""
from __future__ import annotations

import os


def truthy(value: str | None) -> bool:
    """An environment flag as Triton parses its own (TRITON_INTERPRET and the rest): 1, true,
    on or yes, in any case; anything else, unset included, is off."""
    return (value or "").strip().lower() in ("1", "true", "on", "yes")


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (TRITON_INTERPRET), the way Triton reads
    it: TRITON_INTERPRET=false or =2 compiles, so no forge module may assume otherwise."""
    return truthy(os.environ.get("TRITON_INTERPRET"))
