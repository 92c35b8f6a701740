"""Sharpness-aware minimisation (SAM) around an ordinary torch optimizer.

One SAM update takes two forward/backward passes:

1. gradient ``g`` at the weights ``w``;
2. move to ``w + e`` with ``e = rho * g / ||g||`` (``||g||`` the global L2 norm over all
   parameters), take the gradient there, move back to ``w`` and let the base optimizer
   step with that second gradient.

:func:`sam_step` runs the whole sequence. Learning-rate schedulers must be attached to
``sam.base_optimizer`` (SAM itself is not a ``torch.optim.Optimizer``); its
``param_groups`` are the base optimizer's, so reading the lr through either works.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

GRAD_NORM_EPS = 1e-12
"""Added to ``||g||`` so that a zero gradient gives a zero perturbation, not NaN."""


class SAM:
    """SAM wrapper that builds and owns its base optimizer.

    ``SAM(params, base_optimizer_cls, rho=0.05, **base_kwargs)``: ``params`` as for any
    torch optimizer (tensors or param-group dicts); ``base_optimizer_cls`` e.g.
    ``torch.optim.Adam``; ``base_kwargs`` go to it (``lr=1e-3``, ...). ``rho`` is the
    radius of the perturbation in parameter space (L2), > 0.

    Use :meth:`first_step` after the first backward and :meth:`second_step` after the
    second (or simply :func:`sam_step`). Attach schedulers to :attr:`base_optimizer`.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base_optimizer_cls: type[torch.optim.Optimizer],
        rho: float = 0.05,
        **base_kwargs: Any,
    ) -> None:
        if not rho > 0.0:
            raise ValueError(f"SAM rho must be > 0, got {rho}")
        self.rho = float(rho)
        self.base_optimizer = base_optimizer_cls(params, **base_kwargs)
        self._saved: dict[torch.Tensor, torch.Tensor] = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.base_optimizer.param_groups

    def _params_with_grad(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.grad is not None]

    @torch.no_grad()
    def _grad_norm(self, params: list[torch.Tensor]) -> torch.Tensor:
        """Global L2 norm of all gradients, a 0-d tensor on the first parameter's device."""
        device = params[0].device
        dtype = torch.float32
        for p in params:  # at least float32, more if a parameter is float64
            dtype = torch.promote_types(dtype, p.grad.dtype)
        norms = [torch.linalg.vector_norm(p.grad, dtype=dtype).to(device) for p in params]
        return torch.linalg.vector_norm(torch.stack(norms))

    @torch.no_grad()
    def first_step(self) -> None:
        """Move every parameter by ``e_w = rho * g / (||g|| + eps)``, remembering where it was."""
        if self._saved:
            raise RuntimeError("SAM.first_step called twice without second_step")
        params = self._params_with_grad()
        if not params:
            return
        scale = self.rho / (self._grad_norm(params) + GRAD_NORM_EPS)
        for p in params:
            # Keep the original values, not e_w: subtracting e_w back is off by rounding.
            self._saved[p] = p.detach().clone()
            p.add_(p.grad * scale.to(device=p.device, dtype=p.grad.dtype))

    @torch.no_grad()
    def second_step(self) -> None:
        """Put the weights back exactly as before :meth:`first_step`, then step the base optimizer with the
        gradients now in ``.grad`` (those taken at the perturbed weights)."""
        self.restore()
        self.base_optimizer.step()

    @torch.no_grad()
    def restore(self) -> None:
        """Undo a pending :meth:`first_step` without stepping (e.g. after an error)."""
        for p, original in self._saved.items():
            p.copy_(original)
        self._saved.clear()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state plus rho (nothing is pending between steps)."""
        return {"base": self.base_optimizer.state_dict(), "rho": self.rho}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state["base"])
        self.rho = float(state["rho"])


@contextlib.contextmanager
def bn_stats_frozen(model: nn.Module) -> Iterator[None]:
    """Within the block, BatchNorm layers in training mode normalise with batch statistics
    but leave ``running_mean``, ``running_var`` and ``num_batches_tracked`` untouched.

    Done by switching ``track_running_stats`` off for the duration (training-mode BN then
    neither reads nor writes the buffers); eval-mode layers are unaffected.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.track_running_stats for m in layers]
    try:
        for m in layers:
            m.track_running_stats = False
        yield
    finally:
        for m, flag in zip(layers, saved, strict=True):
            m.track_running_stats = flag


def sam_step(model: nn.Module, loss_fn: Callable[[], torch.Tensor], sam: SAM) -> torch.Tensor:
    """One full SAM update of ``model``; returns the first-pass loss (0-d, detached).

    loss_fn: runs the forward pass on the current batch and returns a 0-d loss. It is
    called twice: at the weights, then at the perturbed weights, the second time with
    BatchNorm running statistics frozen (:func:`bn_stats_frozen`) so that each batch
    updates them once. Dropout draws a fresh mask on each pass.
    """
    sam.zero_grad()
    loss = loss_fn()
    loss.backward()
    sam.first_step()
    sam.zero_grad()
    try:
        with bn_stats_frozen(model):
            loss_fn().backward()
    except BaseException:
        sam.restore()
        raise
    sam.second_step()
    return loss.detach()
