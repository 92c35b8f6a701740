"""The resume state of an interrupted training run (never pickled).

Written after every epoch to ``OUT.resume/`` beside the head ``OUT``:

- ``epoch-NNNN-step-SSSSSSSSS.safetensors``: every tensor -- ``model/<key>`` (current weights),
  ``best/<key>`` (weights of the best epoch so far), ``optim/<i>/<name>`` (optimizer
  state of parameter i), ``rng/torch`` (and ``rng/cuda/<k>``) generator states;
- ``state.json``: everything else -- format/version, finished epochs, optimizer steps
  taken (the learning-rate schedule is a pure function of it), the training config,
  best epoch / score / metrics, per-epoch history, the optimizer's param groups and
  non-tensor state, and the name of the tensor file.

The tensor file is written first under a new name, then ``state.json`` is replaced
atomically to point at it, then older tensor files are deleted; an interruption at
any point leaves a consistent state. The folder is removed when training completes.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from ..files import atomic_path, atomic_write_text, make_folder, output_error
from ..heads.base import checkpoint_paths

log = logging.getLogger("affstream")

RESUME_FORMAT = "affstream-train-resume"
RESUME_VERSION = 1
STATE_FILE = "state.json"


def resume_dir(out: str | Path) -> Path:
    """``OUT.resume`` beside the head checkpoint ``OUT`` (stem of OUT.safetensors)."""
    weights, _ = checkpoint_paths(out)
    stem = weights.with_suffix("")
    return stem.with_name(stem.name + ".resume")


@dataclass
class ResumeState:
    """Everything needed to continue a run after ``epoch`` finished epochs."""

    epoch: int
    step: int
    config: dict[str, Any]
    model: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng_torch: torch.Tensor
    rng_cuda: list[torch.Tensor] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float | None = None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"scalars": scalars, "param_groups": groups}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split("/", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _host(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous()


def save_resume(path: Path, state: ResumeState) -> None:
    """Write ``state`` into the folder ``path`` (created if needed), consistently.

    OutputError (one line) if it cannot be written; the state saved before is then
    still the one :func:`load_resume` reads.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    make_folder(path)
    optim_tensors, optim_meta = _split_optimizer(state.optimizer)
    tensors = {f"model/{k}": _host(v) for k, v in state.model.items()}
    tensors.update({f"best/{k}": _host(v) for k, v in state.best.items()})
    tensors.update({k: _host(v).clone() for k, v in optim_tensors.items()})
    tensors["rng/torch"] = _host(state.rng_torch)
    tensors.update({f"rng/cuda/{i}": _host(r) for i, r in enumerate(state.rng_cuda)})
    # the step in the name: a save within an epoch never replaces the file state.json names
    name = f"epoch-{state.epoch:04d}-step-{state.step:09d}.safetensors"
    try:
        with atomic_path(path / name) as tmp:
            save_file(tensors, str(tmp))
    except (OSError, SafetensorError) as exc:
        raise output_error(path / name, exc) from None
    meta = {
        "format": RESUME_FORMAT, "version": RESUME_VERSION, "tensors": name,
        "epoch": state.epoch, "step": state.step, "config": state.config,
        "best_epoch": state.best_epoch, "best_score": state.best_score,
        "best_metrics": state.best_metrics, "history": state.history,
        "optimizer": optim_meta, "n_cuda_rng": len(state.rng_cuda),
    }
    atomic_write_text(path / STATE_FILE, json.dumps(meta, indent=1, sort_keys=True))
    for old in path.glob("epoch-*.safetensors*"):
        if old.name != name:
            try:
                old.unlink(missing_ok=True)
            except OSError as exc:  # harmless: state.json names the current file
                log.warning("%s: could not remove an older resume file (%s)", old, exc.strerror or exc)


def load_resume(path: Path) -> ResumeState | None:
    """The state saved in ``path``, or None if there is none. DataError if unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state_file = path / STATE_FILE
    if not state_file.is_file():
        return None
    try:
        meta = json.loads(state_file.read_text(encoding="utf-8"))
        if meta.get("format") != RESUME_FORMAT or meta.get("version") != RESUME_VERSION:
            raise ValueError("not an affstream resume state of a supported version")
        tensors = load_file(str(path / meta["tensors"]), device="cpu")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as exc:
        raise DataError(f"{path}: unreadable resume state ({exc}); delete the folder to start over") from None

    def group(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    try:
        return ResumeState(
            epoch=int(meta["epoch"]), step=int(meta["step"]), config=dict(meta["config"]),
            model=group("model/"), best=group("best/"),
            optimizer=_join_optimizer({k: v for k, v in tensors.items() if k.startswith("optim/")}, meta["optimizer"]),
            rng_torch=tensors["rng/torch"],
            rng_cuda=[tensors[f"rng/cuda/{i}"] for i in range(int(meta.get("n_cuda_rng", 0)))],
            best_epoch=int(meta["best_epoch"]), best_score=meta["best_score"],
            best_metrics=meta["best_metrics"], history=list(meta["history"]),
        )
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: unreadable resume state ({type(exc).__name__}: {exc}); delete the folder to start "
                        "over") from None


def remove_resume(path: Path) -> None:
    """Delete the resume folder (after a completed run); a folder that cannot be
    deleted is left with a warning (the head is written by then)."""
    if path.is_dir():
        try:
            shutil.rmtree(path)
        except OSError as exc:
            log.warning("%s: could not remove the resume state of the finished run (%s); delete it by hand",
                        path, exc.strerror or exc)
            return
        log.info("removed resume state %s", path)
