"""The cell archive: what is restored, and that a killed restore leaves no half cell."""

from __future__ import annotations

from pathlib import Path

from dmesr.report.archive import ARCHIVE, archived_keys, restore_runs


def _archive_cell(results: Path, key: str) -> None:
    cell = results / ARCHIVE / key
    (cell / "per_user").mkdir(parents=True)
    for name in ("metrics.json", "run.json", "per_user/columns.json"):
        (cell / name).write_text("{}")


def test_restore_skips_existing_cells_and_cleans_a_killed_restore(tmp_path: Path) -> None:
    results, out = tmp_path / "results", tmp_path / "runs"
    for key in ("sasrec/id/seed1", "sasrec/id/seed2", "gru4rec/id/seed1"):
        _archive_cell(results, key)
    assert archived_keys(results) == ["gru4rec/id/seed1", "sasrec/id/seed1", "sasrec/id/seed2"]
    (out / "sasrec/id/seed2").mkdir(parents=True)  # begun here: never mixed
    partial = out / "sasrec/id/.seed1.restoring"  # a restore killed half-way
    partial.mkdir(parents=True)
    (partial / "run.json").write_text("{}")
    restored = restore_runs(results, out, keys=["sasrec/id/seed1", "sasrec/id/seed2"])
    assert restored == ["sasrec/id/seed1"]
    assert sorted(p.name for p in (out / "sasrec/id").iterdir()) == ["seed1", "seed2"]
    assert (out / "sasrec/id/seed1/metrics.json").is_file()
    assert not (out / "sasrec/id/seed2/metrics.json").exists()
    assert not (out / "gru4rec").exists()  # not asked for
