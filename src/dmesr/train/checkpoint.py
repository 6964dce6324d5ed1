"""Checkpoints as single safetensors files: tensors + a JSON state in the metadata.

One file per checkpoint, written atomically, so a SIGKILL leaves either the previous
complete checkpoint or the new one, never a model from one epoch with the counters of
another. `last.safetensors` holds everything needed to resume (model, optimiser, RNG
state, epoch, best score, patience counter, log offset); `best.safetensors` holds the
best model's weights (plus a readable `best.json`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from dmesr.io import atomic_path, write_json

STATE_KEY = "dmesr_state"


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value.detach().clone().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # clone: tied or shared storages are not allowed by safetensors
    return {f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(
    path: Path, model: nn.Module, state: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None, rng: bool = False,
) -> None:
    tensors = _model_tensors(model)
    meta = dict(state)
    if optimizer is not None:
        opt_tensors, opt_meta = _optimizer_tensors(optimizer)
        tensors.update(opt_tensors)
        meta["optimizer"] = opt_meta
    if rng:
        tensors["rng.torch"] = torch.get_rng_state()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={STATE_KEY: json.dumps(meta, default=str)})
    if path.name == "best.safetensors":
        write_json(path.with_suffix(".json"), {k: v for k, v in meta.items() if k != "optimizer"})


def read_state(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()[STATE_KEY])


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
    rng: bool = False,
) -> dict[str, Any]:
    """Restore what the file holds into `model` (and optimiser / RNG); return its state."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[STATE_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if optimizer is not None:
        opt_meta = meta["optimizer"]
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        for idx, extra in opt_meta["scalars"].items():
            state.setdefault(int(idx), {}).update(extra)
        optimizer.load_state_dict({"state": state, "param_groups": opt_meta["param_groups"]})
    if rng:
        torch.set_rng_state(tensors["rng.torch"])
    return meta
