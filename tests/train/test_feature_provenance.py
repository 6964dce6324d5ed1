"""A run records which feature files it read (run.json `features`) and is refused, or
flagged stale, once those files change: its feature tables are not in its checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dmesr.config import load_config
from dmesr.errors import ArtifactMismatchError
from dmesr.experiment.cells import Cell, stale
from dmesr.features.store import FeatureStore, check_features, feature_changes, write_view
from dmesr.io import read_json, write_json
from dmesr.train.commands import load_trained_run
from dmesr.train.config import RunConfig
from dmesr.train.trainer import Trainer
from support import FAKE_VIEWS, write_fake_store


def _overrides(root: Path, store: Path) -> list[str]:
    return [f"dataset.paths.prepared={root}", f"model.encoder.features={store}",
            "model.encoder.type=dmesr", "model.hidden=16", "model.inner=32",
            "model.max_len=8", "train.threads=1", "train.progress=false",
            "train.batch_size=16", "train.epochs=1", "model.loss=bce", "model.n_neg=2"]


@pytest.fixture()
def trained(tiny_dataset, tmp_path) -> tuple[Path, Path, list[str]]:
    store = write_fake_store(tiny_dataset, tmp_path / "features")
    overrides = _overrides(tiny_dataset.root, store)
    out = tmp_path / "run"
    Trainer(load_config(RunConfig, [], overrides), tiny_dataset, out).fit()
    return out, store, overrides


def _rewrite(store: Path, name: str, scale: float) -> None:
    """Write view `name` again with its features times `scale` (1.0: the same bytes)."""
    meta = read_json(store / f"{name}.json")
    feats = np.load(store / f"{name}.npy") * np.float32(scale)
    write_view(store, name, feats, np.load(store / f"{name}.mask.npy"), meta)


def test_run_json_records_the_sha256_of_every_view_it_read(trained, tiny_dataset) -> None:
    out, store, _ = trained
    record = read_json(out / "run.json")["features"]
    assert record["store"] == str(store)
    assert sorted(record["views"]) == sorted(FAKE_VIEWS)
    for name, files in record["views"].items():
        assert files["features_sha256"] == read_json(store / f"{name}.json")["files"][
            "features_sha256"]


def test_an_id_only_run_records_no_features(tiny_dataset, tmp_path) -> None:
    overrides = [*_overrides(tiny_dataset.root, tmp_path / "none"), "model.encoder.type=id"]
    Trainer(load_config(RunConfig, [], overrides), tiny_dataset, tmp_path / "id").fit()
    assert read_json(tmp_path / "id" / "run.json")["features"] is None


def test_changed_features_refuse_resume_and_loading(trained, tiny_dataset) -> None:
    out, store, overrides = trained
    _rewrite(store, "mllm_txt", 1.0)  # embedded again, same content: still the same run
    load_trained_run(out)
    _rewrite(store, "mllm_txt", 2.0)
    with pytest.raises(ArtifactMismatchError, match=r"mllm_txt changed"):
        load_trained_run(out)
    cfg = load_config(RunConfig, [], [*overrides, "train.epochs=2"])
    with pytest.raises(ArtifactMismatchError, match=r"mllm_txt changed"):
        Trainer(cfg, tiny_dataset, out).fit(resume=True)


def test_a_grid_cell_whose_features_changed_is_stale(trained) -> None:
    out, store, overrides = trained
    cell = Cell("sasrec", "dmesr", 2026, False, (), tuple(overrides), out)
    assert cell.is_done() and stale(cell) is None
    _rewrite(store, "text_title", 0.5)
    assert "text_title changed" in stale(cell)


def test_a_run_from_before_the_record_is_not_checked(trained) -> None:
    out, store, overrides = trained
    record = read_json(out / "run.json")
    write_json(out / "run.json", {k: v for k, v in record.items() if k != "features"})
    _rewrite(store, "mllm_img", 3.0)
    load_trained_run(out)
    assert stale(Cell("sasrec", "dmesr", 2026, False, (), tuple(overrides), out)) is None


def test_feature_changes_names_missing_and_added_views(tiny_dataset, tmp_path) -> None:
    store = FeatureStore(write_fake_store(tiny_dataset, tmp_path / "f"), tiny_dataset)
    full = store.record(list(FAKE_VIEWS))
    fewer = store.record(list(FAKE_VIEWS[:3]))
    assert feature_changes(full, fewer) == ["text_genres is gone", "text_title is gone"]
    assert feature_changes(fewer, full) == ["text_genres was not there",
                                            "text_title was not there"]
    masked = {**full, "views": {**full["views"], "text_title": {
        **full["views"]["text_title"], "mask_sha256": "0" * 64}}}  # same features, new mask
    assert feature_changes(full, masked) == [
        f"text_title changed (mask sha256 {full['views']['text_title']['mask_sha256'][:12]}… "
        "now 000000000000…)"]
    moved = {**full, "store": "/elsewhere"}  # an archived or cloned run: only content counts
    assert feature_changes(moved, full) == []
    check_features(None, full, "an old run")  # nothing recorded: nothing to check
    with pytest.raises(ArtifactMismatchError, match="text_title is gone"):
        check_features(full, fewer, "run x")


def test_report_names_the_feature_files_and_warns_when_runs_disagree(trained, tmp_path) -> None:
    from dmesr.report.collect import Experiment, Run, feature_files
    from dmesr.report.tables import feature_lines

    out, store, _ = trained
    other = tmp_path / "other"
    other.mkdir()
    record = read_json(out / "run.json")
    record["features"]["views"]["mllm_txt"]["features_sha256"] = "f" * 64
    write_json(other / "run.json", record)
    old = tmp_path / "old"
    old.mkdir()
    write_json(old / "run.json", {"dataset": record["dataset"]})  # before the record
    old_id = tmp_path / "old_id"  # an ID-only run from before the record: it read none
    old_id.mkdir()
    write_json(old_id / "run.json", {"dataset": record["dataset"], "comparable_config": {
        "model": {"encoder": {"type": "id"}}}})
    runs = [Run("sasrec", "dmesr", s, p, {}) for s, p in ((1, out), (2, other), (3, old))]
    files = feature_files(Experiment(tmp_path, [*runs, Run("sasrec", "id", 4, old_id, {})], {}))
    assert files.unrecorded == 1 and files.none == 1
    txt_sha = read_json(store / "mllm_txt.json")["files"]["features_sha256"]
    assert files.views["mllm_txt"] == {txt_sha: 1, "f" * 64: 1}
    first, warning = feature_lines(files)
    assert "`mllm_img`" in first and "1 runs predate this record" in first
    assert "`mllm_txt`" not in first
    assert "different `mllm_txt` files" in warning and "ffffffffffff (1 runs)" in warning
    assert feature_lines(feature_files(Experiment(tmp_path, runs[:1], {})))[1:] == []


def test_a_served_model_names_the_feature_files_it_answers_with(trained, tiny_dataset,
                                                                tmp_path) -> None:
    from dmesr.serve.recommender import Recommender

    out, store, overrides = trained
    described = Recommender.from_run(out).describe()["features"]
    assert described == {name: read_json(store / f"{name}.json")["files"]["features_sha256"][:12]
                         for name in FAKE_VIEWS}
    id_only = tmp_path / "id"
    cfg = load_config(RunConfig, [], [*overrides, "model.encoder.type=id"])
    Trainer(cfg, tiny_dataset, id_only).fit()
    assert Recommender.from_run(id_only).describe()["features"] is None


def test_rerun_stale_sets_the_old_run_aside_and_trains_the_cell_again(trained) -> None:
    from dmesr.experiment.commands import _plan

    out, store, overrides = trained
    cell = Cell("sasrec", "dmesr", 2026, False, (), tuple(overrides), out)
    _rewrite(store, "text_title", 0.5)
    todo, settled = _plan([cell])
    assert not todo and settled[cell.key].status == "stale" and out.is_dir()
    said: list[str] = []
    todo, settled = _plan([cell], rerun_stale=True, echo=said.append)
    assert todo == [cell] and not settled and not out.exists()
    kept = [p for p in out.parent.iterdir() if p.name.startswith("run.stale-")]
    assert len(kept) == 1 and (kept[0] / "metrics.json").is_file()
    assert "text_title changed" in said[0] and kept[0].name in said[0]
