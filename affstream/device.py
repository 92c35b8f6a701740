"""Choosing the torch device from a user's string."""

from __future__ import annotations

from .errors import ConfigError


def resolve_device(spec: str = "auto"):
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cpu``; ``cuda`` / ``cuda:N``.

    Returns a ``torch.device``. Raises ConfigError for an unknown or unavailable device.
    """
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{spec}' requested but CUDA is not available; use --device cpu")
        try:
            device = torch.device(spec)
        except RuntimeError:
            raise ConfigError(f"invalid device '{spec}' (use auto, cpu, cuda or cuda:N)") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device '{spec}' does not exist ({torch.cuda.device_count()} GPU(s) visible)")
        return device
    raise ConfigError(f"invalid device '{spec}' (use auto, cpu, cuda or cuda:N)")
