"""Preparation: k-core, order, ids, split, negatives, atomic output, bad input."""

from __future__ import annotations

import collections
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmesr.data.dataset import PreparedDataset
from dmesr.data.prepare import dedup_mask, kcore_mask, prepare, sample_negatives, up_to_date
from dmesr.data.schema import DatasetConfig
from dmesr.errors import DataError, EmptyResultError

HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"


def _cfg(inter: Path, **kw) -> DatasetConfig:
    base = dict(name="t", format="recbole_atomic", paths={"inter": str(inter)},
                filter={"user_min": 3, "item_min": 1}, split={"n_negatives": 3, "seed": 0})
    base.update(kw)
    return DatasetConfig(**base)


def _write(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _quiet(*_):
    return None


def textbook_kcore(rows: list[tuple[str, str]], user_min: int, item_min: int):
    """Iterative k-core by its textbook definition, with dicts (independent of prepare)."""
    while True:
        uc = collections.Counter(u for u, _ in rows)
        ic = collections.Counter(i for _, i in rows)
        kept = [(u, i) for u, i in rows if uc[u] >= user_min and ic[i] >= item_min]
        if len(kept) == len(rows):
            return rows
        rows = kept


def test_kcore_matches_independent_count(tiny_dataset: PreparedDataset, tmp_path: Path):
    raw = Path(tiny_dataset.manifest["sources"][0]["path"])
    with open(raw) as f:
        reader = csv.reader(f, delimiter="\t")
        next(reader)
        rows = [(u, i) for u, i, _, _ in reader]
    rows = textbook_kcore(rows, user_min=5, item_min=2)
    stats = tiny_dataset.manifest["stats"]
    assert (stats["users"], stats["items"], stats["interactions"]) == (
        len({u for u, _ in rows}), len({i for _, i in rows}), len(rows))
    assert all(isinstance(stats[k], int) for k in ("users", "items", "interactions"))


def test_kcore_is_iterative():
    # user 2 (one item) goes first; only then does item 2 fall below 2 users
    user = np.array([0, 0, 0, 1, 1, 2])
    item = np.array([0, 1, 2, 0, 1, 2])
    keep, iterations = kcore_mask(user, item, user_min=2, item_min=2, max_iterations=10)
    assert keep.tolist() == [True, True, False, True, True, False]
    assert iterations == 3


def test_ids_contiguous_and_order_stable_on_ties(tmp_path: Path):
    rows = ["b\tx\t1\t10", "a\ty\t1\t5", "a\tz\t1\t5", "a\tx\t1\t5", "b\ty\t1\t10",
            "b\tz\t1\t3", "a\tw\t1\t1"]
    ds = prepare(_cfg(_write(tmp_path / "d.inter", rows)), tmp_path / "out", _quiet, False)
    inter = ds.interactions
    assert set(inter["user"]) == {1, 2} and set(inter["item"]) == {1, 2, 3, 4}
    items = ds.items.set_index("item")["item_key"]
    seq_a = [items[i] for i in inter.loc[inter.user == 1, "item"]]
    seq_b = [items[i] for i in inter.loc[inter.user == 2, "item"]]
    assert seq_a == ["w", "y", "z", "x"]  # ties at t=5 keep file order
    assert seq_b == ["z", "x", "y"]
    assert ds.users["user_key"].tolist() == ["a", "b"]


def test_leave_one_out_split(tiny_dataset: PreparedDataset):
    full_ptr, full = tiny_dataset.seq_indptr, tiny_dataset.seq_items
    train, valid, test = (tiny_dataset.split(s) for s in ("train", "valid", "test"))
    for row, user in enumerate(test.users[:10]):
        seq = full[full_ptr[user]:full_ptr[user + 1]]
        assert test.targets[row] == seq[-1] and valid.targets[row] == seq[-2]
        assert list(test.items[test.indptr[row]:test.indptr[row + 1]]) == list(seq[:-1])
        assert list(valid.items[valid.indptr[row]:valid.indptr[row + 1]]) == list(seq[:-2])
        assert list(train.items[train.indptr[row]:train.indptr[row + 1]]) == list(seq[:-2])
    padded = test.padded(5)
    seq = full[full_ptr[1]:full_ptr[2]][:-1]
    assert padded[0].tolist() == list(seq[-5:])


def test_negatives_unseen_distinct_seeded(tiny_dataset: PreparedDataset):
    for name in ("valid", "test"):
        neg = tiny_dataset.negatives(name)
        assert neg.shape == (tiny_dataset.n_users + 1, 20) and neg.dtype == np.int32
        assert (neg[0] == 0).all()
        ptr, items = tiny_dataset.seq_indptr, tiny_dataset.seq_items
        for u in range(1, tiny_dataset.n_users + 1):
            row = neg[u]
            assert len(set(row.tolist())) == len(row)
            assert not set(row.tolist()) & set(items[ptr[u]:ptr[u + 1]].tolist())
            assert row.min() >= 1 and row.max() <= tiny_dataset.n_items
    assert not np.array_equal(tiny_dataset.negatives("valid"), tiny_dataset.negatives("test"))


def test_negative_sampling_is_uniform_and_handles_full_users():
    n_users, n_items = 2000, 50
    rng = np.random.default_rng(0)
    items = np.concatenate([rng.choice(np.arange(1, n_items + 1), 10, replace=False)
                            for _ in range(n_users)]).astype(np.int32)
    indptr = np.r_[0, 0, np.cumsum(np.full(n_users, 10))].astype(np.int64)
    neg, short = sample_negatives(indptr, items, n_items, 20, np.random.default_rng(1))
    counts = np.bincount(neg[1:].ravel(), minlength=n_items + 1)[1:]
    # every item equally likely: each count ~ 2000*20/50 = 800, sd ~ 25
    assert short == 0 and counts.min() > 650 and counts.max() < 950
    again, _ = sample_negatives(indptr, items, n_items, 20, np.random.default_rng(1))
    assert np.array_equal(neg, again)
    # a user who saw all but 3 items gets those 3, padded with 0
    seen = np.arange(1, 48, dtype=np.int32)
    neg, short = sample_negatives(np.array([0, 0, 47]), seen, 50, 5, np.random.default_rng(0))
    assert short == 1 and sorted(neg[1, :3].tolist()) == [48, 49, 50] and neg[1, 3:].sum() == 0


@pytest.mark.parametrize(("mode", "kept"), [
    ("none", 6), ("exact", 5), ("consecutive", 4), ("user_item", 3)])
def test_dedup_modes(mode: str, kept: int):
    user = np.array([0, 0, 0, 0, 0, 0])
    item = np.array([1, 1, 2, 1, 1, 3])
    ts = np.array([1, 1, 2, 3, 4, 5])
    assert dedup_mask(user, item, ts, mode).sum() == kept


def test_writes_manifest_and_stats(tiny_dataset: PreparedDataset):
    root = tiny_dataset.root
    m = json.loads((root / "manifest.json").read_text())
    assert m["sources"][0]["sha256"] and len(m["content_hash"]) == 64
    assert m["parameters"]["filter"]["user_min"] == 5
    assert m["created_by"].startswith("dmesr ")
    assert (root / "stats.md").read_text().startswith("## tiny")
    assert not list(root.parent.glob(".prepared.partial-*"))


# --- bad input: a clear message, nothing half-written -------------------------------

BAD_CASES = {
    "wrong field count": (["u1\ti1\t5\t100", "u1\ti2\t5", "u1\ti3\t4\t300"],
                          r"d\.inter:3: expected 4 fields"),
    "non-numeric rating": (["u1\ti1\t5\t100", "u1\ti2\tfive\t200"],
                           r"d\.inter:3: field 'rating': expected a numeric rating, got 'five'"),
    "bad timestamp": (["u1\ti1\t5\t100", "u1\ti2\t4\tyesterday", "u1\ti3\t4\t300"],
                      r"d\.inter:3: field 'timestamp': expected a unix timestamp"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_records_raise_with_location(tmp_path: Path, case: str):
    rows, pattern = BAD_CASES[case]
    cfg = _cfg(_write(tmp_path / "d.inter", rows))
    with pytest.raises(DataError, match=pattern):
        prepare(cfg, tmp_path / "out", _quiet, False)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out*"))


def test_missing_column_names_field(tmp_path: Path):
    path = _write(tmp_path / "d.inter", ["u1\ti1\t5"],
                  header="user_id:token\titem_id:token\trating:float")
    with pytest.raises(DataError, match=r"d\.inter:1: field 'timestamp': missing column"):
        prepare(_cfg(path), tmp_path / "out", _quiet, False)
    assert not (tmp_path / "out").exists()


def test_non_utf8_bytes_name_the_line(tmp_path: Path):
    path = tmp_path / "d.inter"
    path.write_bytes((HEADER + "\nu1\ti1\t5\t1\nu\xff\xfe2\ti1\t5\t2\n").encode("latin-1"))
    with pytest.raises(DataError, match=r"d\.inter:3: bytes are not valid utf-8"):
        prepare(_cfg(path), tmp_path / "out", _quiet, False)
    assert not (tmp_path / "out").exists()


def test_skip_mode_counts_and_writes_rejects(tmp_path: Path):
    rows = [f"u1\ti{k}\t5\t{k}" for k in range(1, 5)] + ["u1\tix\tbad\t9", "u2\ti1"]
    cfg = _cfg(_write(tmp_path / "d.inter", rows), on_error="skip")
    ds = prepare(cfg, tmp_path / "out", _quiet, False)
    rejects = [json.loads(x) for x in (ds.root / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in rejects] == [(7, None), (6, "rating")]
    assert ds.manifest["stats"]["rejected_records"] == 2
    assert ds.n_users == 1 and ds.manifest["stats"]["interactions"] == 4


def test_empty_result_after_filtering(tmp_path: Path):
    cfg = _cfg(_write(tmp_path / "d.inter", ["u1\ti1\t5\t1", "u1\ti2\t5\t2"]))
    with pytest.raises(EmptyResultError, match="nothing left after filtering"):
        prepare(cfg, tmp_path / "out", _quiet, False)
    assert not (tmp_path / "out").exists()


def test_failure_while_writing_keeps_previous_output(tmp_path: Path, monkeypatch):
    rows = [f"u1\ti{k}\t5\t{k}" for k in range(1, 5)]
    cfg = _cfg(_write(tmp_path / "d.inter", rows))
    first = prepare(cfg, tmp_path / "out", _quiet, False)
    before = (first.root / "manifest.json").read_text()

    def boom(*_a, **_k):
        raise KeyboardInterrupt  # like a Ctrl-C in the middle of writing

    monkeypatch.setattr("dmesr.data.prepare.stats_markdown", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg.model_copy(update={"split": cfg.split.model_copy(update={"seed": 9})}),
                tmp_path / "out", _quiet, False)
    assert (tmp_path / "out" / "manifest.json").read_text() == before
    assert not list(tmp_path.glob(".out.partial-*"))


def test_killed_run_leaves_no_complete_looking_output(tmp_path: Path):
    """SIGKILL during writing: the target folder must not exist (only a hidden partial)."""
    rows = [f"u{u}\ti{k}\t5\t{k}" for u in range(50) for k in range(1, 9)]
    inter = _write(tmp_path / "d.inter", rows)
    script = f"""
import os, signal
import dmesr.data.prepare as p
from dmesr.data.schema import DatasetConfig
real = p.save_npy
def killer(path, arr):
    real(path, arr)
    os.kill(os.getpid(), signal.SIGKILL)
p.save_npy = killer
cfg = DatasetConfig(name='t', format='recbole_atomic', paths={{'inter': {str(inter)!r}}},
                    filter={{'user_min': 3, 'item_min': 1}}, split={{'n_negatives': 3}})
p.prepare(cfg, {str(tmp_path / 'out')!r}, lambda *_: None, False)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    assert not (tmp_path / "out").exists()
    with pytest.raises(Exception, match="not a prepared dataset"):
        PreparedDataset(tmp_path / "out")


def test_cli_error_is_clear_and_exit_code_2(tmp_path: Path):
    path = _write(tmp_path / "d.inter", ["u1\ti1\t5\t100", "u1\ti2\tfive\t200"])
    cfg = tmp_path / "d.yaml"
    cfg.write_text(f"name: d\nformat: recbole_atomic\npaths: {{inter: {path.name}}}\n")
    proc = subprocess.run([sys.executable, "-m", "dmesr.cli", "prepare", "--config", str(cfg),
                           "--out", str(tmp_path / "out"), "--quiet"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "d.inter:3: field 'rating': expected a numeric rating, got 'five'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_items_keep_text_fields(tiny_dataset: PreparedDataset):
    items = tiny_dataset.items
    assert tiny_dataset.text_fields == ["title", "genres"]
    assert items["item"].tolist() == list(range(1, tiny_dataset.n_items + 1))
    assert items["title"].str.startswith("Movie number").all()
    assert (items["image_status"] == "none").all()
    assert isinstance(items, pd.DataFrame)


def test_rerun_is_skipped_and_later_stages_survive_a_rebuild(tmp_path: Path):
    rows = [f"u{u}\ti{k}\t5\t{k}" for u in range(3) for k in range(1, 6)]
    inter = _write(tmp_path / "d.inter", rows)
    cfg = _cfg(inter)
    logs: list[str] = []
    first = prepare(cfg, tmp_path / "out", logs.append, False)
    (first.root / "enhance").mkdir()
    (first.root / "enhance" / "cache.jsonl").write_text("{}\n")
    mtime = (first.root / "manifest.json").stat().st_mtime_ns
    prepare(cfg, tmp_path / "out", logs.append, False)
    assert "up to date" in logs[-1]
    assert (first.root / "manifest.json").stat().st_mtime_ns == mtime
    inter.write_text(inter.read_text() + "u9\ti1\t5\t1\n")  # the source changed: rebuild
    prepare(cfg, tmp_path / "out", logs.append, False)
    assert (first.root / "manifest.json").stat().st_mtime_ns != mtime
    assert (tmp_path / "out" / "enhance" / "cache.jsonl").read_text() == "{}\n"
    new_cfg = cfg.model_copy(update={"split": cfg.split.model_copy(update={"seed": 5})})
    assert not up_to_date(new_cfg, tmp_path / "out")


def test_negatives_count_distinct_items_when_sequences_repeat():
    # 5 items; the user saw items 1 and 2 four times each: 3 unseen items, not 5 - 8 < 0
    items = np.array([1, 2, 1, 2, 1, 2, 1, 2], dtype=np.int32)
    neg, short = sample_negatives(np.array([0, 0, 8]), items, 5, 3, np.random.default_rng(0))
    assert short == 0 and sorted(neg[1].tolist()) == [3, 4, 5]
    neg, short = sample_negatives(np.array([0, 0, 8]), items, 5, 4, np.random.default_rng(0))
    assert short == 1 and sorted(neg[1, :3].tolist()) == [3, 4, 5] and neg[1, 3] == 0


def _fixture_cfg(fmt: str, folder: str) -> DatasetConfig:
    root = Path(__file__).resolve().parents[1] / "fixtures" / folder
    return DatasetConfig(name=folder, format=fmt, paths={"root": str(root)},
                         filter={"user_min": 3, "item_min": 1}, split={"n_negatives": 2})


def test_movielens_1m_layout(tmp_path: Path):
    ds = prepare(_fixture_cfg("movielens_1m", "ml1m"), tmp_path / "o", _quiet, False)
    assert (ds.n_users, ds.manifest["stats"]["interactions"]) == (6, 36)
    items = ds.items.set_index("item_key")
    assert items.loc["8", "title"] == "Misérables, Les (1995)"  # latin-1 decoded
    assert items.loc["1", "genres"] == "Animation, Children's, Comedy"
    assert ds.interactions["timestamp"].iloc[0] == 978300100 * 1000  # seconds -> ms


def test_movielens_100k_original_layout(tmp_path: Path):
    ds = prepare(_fixture_cfg("movielens_100k", "ml100k"), tmp_path / "o", _quiet, False)
    assert (ds.n_users, ds.manifest["stats"]["interactions"]) == (6, 36)
    assert ds.text_fields == ["title", "release_date", "genres"]
    assert "Café Society (1995)" in set(ds.items["title"])
    assert ds.items["genres"].notna().all()


def test_real_ml100k_posters_against_independent_count(shared_data: Path, tmp_path: Path):
    """5-core counts and poster coverage recomputed with csv/os alone."""
    from dmesr.config import load_config

    root = shared_data / "ml-100k-tmdb-posters"
    with open(root / "ml-100k" / "u.data") as f:
        rows = [tuple(line.split("\t")[:2]) for line in f]
    rows = textbook_kcore(rows, user_min=5, item_min=5)
    items = {i for _, i in rows}
    with open(root / "tmdb_link_check.csv") as f:
        wrong = {r["movie_id"] for r in csv.DictReader(f) if r["likely_wrong_link"] == "True"}
    ok = {i for i in items - wrong if (root / "posters" / f"{i}.jpg").is_file()}
    cfg = load_config(DatasetConfig, [Path(__file__).resolve().parents[2] / "configs" /
                                      "datasets" / "ml100k_posters.yaml"],
                      [f"paths.root={root}"])
    ds = prepare(cfg, tmp_path / "posters", _quiet, False)
    stats = ds.manifest["stats"]
    assert (stats["users"], stats["items"], stats["interactions"]) == (
        len({u for u, _ in rows}), len(items), len(rows))
    assert stats["images"]["ok"] == len(ok)
    assert stats["images"]["none"] == len(items & wrong)
    masked = ds.items[ds.items["item_key"].isin(wrong)]
    assert masked["overview"].isna().all() and masked["image_path"].isna().all()


def test_sequences_match_the_interactions_table(tiny_dataset: PreparedDataset):
    inter = pd.read_parquet(tiny_dataset.root / "interactions.parquet")
    indptr, items = tiny_dataset.seq_indptr, tiny_dataset.seq_items
    assert items.dtype == np.int32 and items.flags.writeable
    np.testing.assert_array_equal(items, inter["item"].to_numpy())
    users = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    np.testing.assert_array_equal(users, inter["user"].to_numpy())


def test_id_columns_of_the_wrong_type_are_refused(tiny_dataset: PreparedDataset, tmp_path: Path):
    import shutil

    from dmesr.errors import ArtifactMismatchError

    copy = Path(shutil.copytree(tiny_dataset.root, tmp_path / "copy"))
    inter = pd.read_parquet(copy / "interactions.parquet")
    inter["item"] = inter["item"].astype("int64")
    inter.to_parquet(copy / "interactions.parquet", index=False)
    with pytest.raises(ArtifactMismatchError, match="column 'item' must be int32"):
        PreparedDataset(copy).split("train")


def test_reading_sequences_keeps_pandas_out_of_training(tiny_dataset: PreparedDataset):
    # pandas adds ~100 MB to every training process's RSS (compared with RecBole's)
    code = ("import sys; from dmesr.data.dataset import PreparedDataset; "
            f"ds = PreparedDataset({str(tiny_dataset.root)!r}); ds.split('train').padded(8); "
            "print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
