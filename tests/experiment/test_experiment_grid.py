"""Grid configuration and cell expansion: vocabulary, order, skipping, --only."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmesr.config import apply_overrides
from dmesr.errors import ConfigError
from dmesr.experiment.cells import expand, parse_only, select, validate
from dmesr.experiment.commands import _plan
from dmesr.experiment.config import load_grid, split_overrides, to_overrides

EXP = Path(__file__).resolve().parents[2] / "configs" / "experiments"
TINY = EXP / "grid_tiny.yaml"
VOCABULARY = ["id", "llmesr", "mllm_concat", "dmesr", "dmesr-no_align", "dmesr-no_fusion",
              "dmesr-mllm_only", "dmesr-text_only", "dmesr-no_id", "dmesr-no_img",
              "dmesr-no_txt", "dmesr-no_mm", "dmesr-item_fusion", "dmesr-seq_fusion"]


def test_vocabulary_has_exactly_the_spec_names() -> None:
    grid = load_grid(EXP / "grid_ml100k_posters.yaml")
    assert sorted(grid.vocabulary) == sorted(VOCABULARY)
    assert grid.variants == ["id", "llmesr", "mllm_concat", "dmesr"]
    assert set(grid.ablations) == set(VOCABULARY) - set(grid.variants)


@pytest.mark.parametrize("name", ["grid_ml100k", "grid_ml100k_posters", "grid_hm", "grid_tiny",
                                  "input_dropout_ml100k", "tune_gru4rec_hm"])
def test_every_cell_of_the_shipped_grids_is_a_valid_run_config(name: str, tmp_path) -> None:
    grid = load_grid(EXP / f"{name}.yaml", [f"out={tmp_path}"])
    cells = expand(grid)
    n_main = len(grid.variants) * len(grid.backbones)
    n_abl = len(grid.ablations) * len(grid.ablation_backbones)
    assert len(cells) == (n_main + n_abl) * len(grid.seeds)
    for cell in cells[: n_main + n_abl]:  # one seed is enough: seeds change one override
        assert validate(cell) is None, (cell.key, validate(cell))


def test_expansion_order_layers_and_paths(tmp_path) -> None:
    grid = load_grid(TINY, [f"out={tmp_path}"])
    cells = expand(grid, ["train.lr=0.01"])
    # seed-major; ablations only on the ablation backbone
    assert [c.key for c in cells[:5]] == [
        "sasrec/id/seed1", "sasrec/drop5/seed1", "sasrec/attn0/seed1",
        "gru4rec/id/seed1", "gru4rec/drop5/seed1"]
    assert len(cells) == 10 and cells[5].key == "sasrec/id/seed2"
    assert [c.ablation for c in cells[:3]] == [False, False, True]
    drop = cells[1]
    assert drop.out == tmp_path / "sasrec" / "drop5" / "seed1"
    assert Path(drop.configs[0]).is_absolute() and drop.configs[0].endswith("base_ml100k.yaml")
    o = list(drop.overrides)
    # backbone < grid overrides < variant < command line < seed
    assert o.index("model.backbone=sasrec") < o.index("model.hidden=16")
    assert o.index("train.epochs=2") < o.index("model.dropout=0.5") < o.index("train.lr=0.01")
    assert o[-1] == "train.seed=1"


def test_mapping_variants_become_the_same_overrides() -> None:
    spec = {"model": {"dropout": 0.3, "encoder": {"type": "dmesr",
                                                  "dmesr": {"out_views": ["id", "text"]}}}}
    out = to_overrides(spec, "v")
    assert apply_overrides({}, out) == spec
    with pytest.raises(ConfigError):
        to_overrides(["model.dropout"], "v")


def test_split_overrides_routes_run_and_grid_settings() -> None:
    grid, run = split_overrides(["train.epochs=3", "seeds=[1]", "dataset.paths.prepared=/x",
                                 "dataset=other", "model.dropout=0.1", "workers=1"])
    assert grid == ["seeds=[1]", "dataset=other", "workers=1"]
    assert run == ["train.epochs=3", "dataset.paths.prepared=/x", "model.dropout=0.1"]


def test_unknown_vocabulary_name_and_unknown_key_are_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not in vocabulary"):
        load_grid(EXP / "grid_ml100k.yaml", ["variants=[id, nope]"])
    with pytest.raises(ConfigError, match="seed"):
        load_grid(EXP / "grid_ml100k.yaml", ["seed=[1]"])


def test_only_selects_by_glob() -> None:
    cells = expand(load_grid(TINY))
    picked = select(cells, parse_only(["backbone=sasrec,variant=d*", "variant=attn0,seed=2"]))
    assert [c.key for c in picked] == ["sasrec/drop5/seed1", "sasrec/drop5/seed2",
                                       "sasrec/attn0/seed2"]
    with pytest.raises(ConfigError):
        parse_only(["model=sasrec"])


def test_finished_cells_are_skipped_and_killed_ones_resume(tmp_path) -> None:
    cells = expand(load_grid(TINY, [f"out={tmp_path}"]))
    done, killed = cells[0], cells[1]
    done.out.mkdir(parents=True)
    (done.out / "metrics.json").write_text("{}")
    (killed.out / "checkpoints").mkdir(parents=True)
    (killed.out / "checkpoints" / "last.safetensors").write_bytes(b"")
    assert (done.status(), killed.status(), cells[2].status()) == ("done", "resume", "todo")
    todo, settled = _plan(cells)
    assert settled[done.key].status == "skipped"
    assert done not in todo and killed in todo and len(todo) == len(cells) - 1


def test_stale_ignores_options_added_after_the_run_unless_a_config_sets_them() -> None:
    from dmesr.train.trainer import _differs

    saved = {"model": {"hidden": 64, "encoder": {"fusion": "cross_attention"}}}
    now = {"model": {"hidden": 64, "encoder": {"fusion": "cross_attention",
                                                "sequence_keys": "concat"}}}
    assert not _differs(saved, now, {"model": {"hidden": 64}})  # added, left at default
    assert _differs(saved, now, {"model": {"encoder": {"sequence_keys": "concat"}}})  # set
    assert _differs(saved, {"model": {"hidden": 32, "encoder": {"fusion": "cross_attention"}}},
                    {})
    assert _differs(saved, {"model": {"hidden": 64, "encoder": {"fusion": "mean"}}}, {})
    assert _differs(saved, {"model": {"hidden": 64, "encoder": {}}}, {})  # a setting removed


def test_stale_flags_a_finished_cell_whose_variant_was_edited(tmp_path) -> None:
    from dmesr.config import load_config
    from dmesr.experiment.cells import Cell, stale
    from dmesr.io import write_json
    from dmesr.train.config import RunConfig
    from dmesr.train.trainer import _comparable

    base = tmp_path / "base.yaml"
    base.write_text("dataset:\n  paths:\n    prepared: data\nmodel:\n  backbone: sasrec\n")
    dmesr = ("model.hidden=64", "model.encoder.type=dmesr")
    cell = Cell("sasrec", "dmesr", 2026, False, (str(base),), dmesr, tmp_path / "run")
    cell.out.mkdir()
    saved = _comparable(load_config(RunConfig, [str(base)], list(dmesr)))
    del saved["model"]["encoder"]["dmesr"]["sequence_keys"]  # a run older than the option
    write_json(cell.out / "run.json", {"comparable_config": saved})
    assert not stale(cell)
    edited = Cell("sasrec", "dmesr", 2026, False, (str(base),),
                  (*dmesr, "model.encoder.dmesr.sequence_keys=mean"), cell.out)
    assert stale(edited)
    assert stale(Cell("sasrec", "dmesr", 2026, False, (str(base),),
                      ("model.hidden=32", "model.encoder.type=dmesr"), cell.out))


def test_dmesr_settings_do_not_make_an_id_only_run_stale(tmp_path) -> None:
    """A backbone file may set DMESR options for its DMESR variants; the ID-only cells that
    read the same file are not changed by them."""
    from dmesr.config import load_config
    from dmesr.experiment.cells import Cell, stale
    from dmesr.io import write_json
    from dmesr.train.config import RunConfig
    from dmesr.train.trainer import _comparable

    base = tmp_path / "base.yaml"
    base.write_text("dataset:\n  paths:\n    prepared: data\nmodel:\n  backbone: sasrec\n")
    cell = Cell("sasrec", "id", 2026, False, (str(base),), ("model.hidden=64",), tmp_path / "run")
    cell.out.mkdir()
    # a run.json from before irrelevant settings were dropped: it still holds them
    cfg = load_config(RunConfig, [str(base)], ["model.hidden=64"])
    saved = _comparable(cfg)
    saved["model"]["encoder"]["dmesr"] = cfg.model.encoder.dmesr.model_dump(mode="json")
    write_json(cell.out / "run.json", {"comparable_config": saved})
    edited = Cell("sasrec", "id", 2026, False, (str(base),),
                  ("model.hidden=64", "model.encoder.dmesr.sequence_fusion=[]"), cell.out)
    assert not stale(edited)
    assert stale(Cell("sasrec", "id", 2026, False, (str(base),),
                      ("model.hidden=64", "model.encoder.type=dmesr"), cell.out))


def test_the_same_dataset_path_spelled_another_way_is_no_change(tmp_path) -> None:
    from dmesr.config import load_config
    from dmesr.train.config import RunConfig
    from dmesr.train.trainer import _comparable, config_changed

    cfg = load_config(RunConfig, [], [f"dataset.paths.prepared={tmp_path / 'data'}"])
    saved = _comparable(cfg)
    saved["dataset"]["paths"]["prepared"] = str(tmp_path / "configs" / ".." / "data")
    assert not config_changed(saved, cfg)
    saved["dataset"]["paths"]["prepared"] = str(tmp_path / "other")
    assert config_changed(saved, cfg)
