"""ldmctl: latent diffusion models you can train on your own images, on your own machine."""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: Marker for plugin hook implementations (``@hookimpl def ldmctl_register_conditioners(...)``).
hookimpl = pluggy.HookimplMarker("ldmctl")

__all__ = ["__version__", "hookimpl"]
