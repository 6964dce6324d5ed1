"""Going on with a stopped run when only its stopping rule grew.

Patience, the time budget and the epoch count decide only *when* a run stops, never
what an epoch does, and a resumed run is bit-exact. So a run that stopped under a
smaller patience (budget, epoch count) is, epoch for epoch, the run a larger one asks
for, up to where it stopped: continuing it from its `last` checkpoint gives that run for
the cost of the extra epochs only. A smaller patience is a change (the run may have gone
on where the new rule would have stopped it), and so is an epoch count below the
epochs a run trained.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from dmesr.io import read_json, write_json
from dmesr.train.config import RunConfig, TrainConfig

# the settings whose change a run records when it goes on under them (run.json "continued")
STOPPING = ("patience", "epochs", "max_minutes")


def still_stopped(state: dict[str, Any], tc: TrainConfig) -> str | None:
    """Why a run whose trainer state is `state` does not go on under the settings `tc`
    ("early stopping", "time budget", "epochs"); None when it would train more epochs."""
    lifted = {"early stopping": state["bad_evals"] < tc.patience,
              "time budget": not (tc.max_minutes and state["elapsed_s"] > 60 * tc.max_minutes)}
    reason = state.get("stopped")
    if lifted.get(reason, False):
        reason = None
    if reason is None and state["epoch"] >= tc.epochs:
        return "epochs"
    return reason


def inexact(state: dict[str, Any], tc: TrainConfig) -> str | None:
    """Why going on from `state` under `tc` would not give the run `tc` asks for (None:
    it would): the run's last epoch was validated only because it was its last."""
    epoch = state["epoch"]
    if not state.get("stopped") and epoch % tc.eval_every:
        return (f"its epoch {epoch} was validated only because it was the last one "
                f"(eval_every={tc.eval_every}); a longer run would not have validated it")
    return None


def finished_state(run_dir: Path) -> dict[str, Any]:
    """The trainer state a finished run stopped in, from its metrics.json and run.json
    (an archived copy has no checkpoint): a run stopped early had exhausted its patience."""
    metrics = read_json(run_dir / "metrics.json")
    patience = read_json(run_dir / "run.json")["comparable_config"]["train"]["patience"]
    stopped = metrics.get("stopped")
    return {"epoch": int(metrics["train.epochs"]), "stopped": stopped,
            "elapsed_s": float(metrics.get("train.wall_s", 0.0)),
            "bad_evals": patience if stopped == "early stopping" else 0}


def plan(run_dir: Path, cfg: RunConfig) -> tuple[str, str | None]:
    """What a finished run becomes under `cfg` (whose other settings it already has):
    ("done", None) it is that run; ("continue", why) it goes on from its last checkpoint;
    ("stale", why) it cannot become that run (kept, or rerun with --rerun-stale)."""
    state = finished_state(run_dir)
    tc = cfg.train
    if state["epoch"] > tc.epochs:
        return "stale", f"it trained {state['epoch']} epochs, more than epochs={tc.epochs}"
    if still_stopped(state, tc):
        return "done", None
    why = f"stopped at epoch {state['epoch']} ({state['stopped'] or 'epochs'}): " + ", ".join(
        f"{k}={getattr(tc, k)}" for k in STOPPING)
    if problem := inexact(state, tc):
        return "stale", problem
    if not (run_dir / "checkpoints" / "last.safetensors").is_file():
        return "stale", f"{why} asks for more, but it has no last checkpoint (an archived copy)"
    return "continue", why


def record_continuation(run_dir: Path, cfg: RunConfig, comparable: dict[str, Any],
                        epoch: int) -> dict[str, list[Any]]:
    """Note in run.json that the run goes on from `epoch` under other stopping settings
    than its config.yaml has (its comparable config takes the new ones); returns
    {setting: [old, new]}."""
    old = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("train", {})
    changed = {f"train.{k}": [old.get(k), getattr(cfg.train, k)]
               for k in STOPPING if old.get(k) != getattr(cfg.train, k)}
    if changed:
        record = read_json(run_dir / "run.json")
        record["comparable_config"] = comparable
        record.setdefault("continued", []).append({
            "from_epoch": epoch, "changed": changed,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        write_json(run_dir / "run.json", record)
    return changed
