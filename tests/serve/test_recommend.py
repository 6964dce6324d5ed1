"""Serving: top-K lists from a trained run (API, `dmesr recommend`, `dmesr serve`)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from dmesr.config import load_config
from dmesr.errors import DmesrError
from dmesr.serve.commands import TERMINAL_ROWS, echo_table, recommend
from dmesr.serve.http import make_server
from dmesr.serve.recommender import Recommender
from dmesr.train.commands import load_trained_run
from dmesr.train.config import RunConfig
from dmesr.train.trainer import Trainer


def train_tiny(ds, out: Path, backbone: str = "sasrec", epochs: int = 2) -> Path:
    cfg = load_config(RunConfig, [], [
        f"dataset.paths.prepared={ds.root}", f"model.backbone={backbone}", "model.hidden=16",
        "model.inner=32", "model.max_len=10", "train.threads=1", "train.progress=false",
        "train.batch_size=8", f"train.epochs={epochs}", "model.loss=bce"])
    Trainer(cfg, ds, out).fit()
    return out


@pytest.fixture(scope="module")
def run_dir(tiny_dataset, tmp_path_factory) -> Path:
    return train_tiny(tiny_dataset, tmp_path_factory.mktemp("serve") / "run")


@pytest.mark.parametrize("backbone", ["bert4rec", "gru4rec", "pop"])
def test_every_model_serves_through_the_contract(backbone, tiny_dataset, tmp_path) -> None:
    rec = Recommender.from_run(train_tiny(tiny_dataset, tmp_path / backbone, backbone, 1))
    before = {k: v.clone() for k, v in rec.model.state_dict().items()}
    rec.for_users(rec.user_keys[:1], k=4)  # one row: Pop's scores are a view of its buffer
    assert all(torch.equal(v, rec.model.state_dict()[k]) for k, v in before.items())
    keys = rec.user_keys[:3]
    top = rec.for_users(keys, k=4)
    assert top.items.shape == (3, 4) and (top.items > 0).all()
    assert (np.diff(top.scores, axis=1) <= 0).all()
    for row, user in enumerate(rec.user_ids(keys)):
        assert not set(user_history(tiny_dataset, int(user))) & set(top.items[row])


@pytest.fixture(scope="module")
def rec(run_dir) -> Recommender:
    return Recommender.from_run(run_dir)


class Recording(torch.nn.Module):
    """Stands in for the model: constant scores (all tied), records the input."""

    def __init__(self, n_items: int) -> None:
        super().__init__()
        self.n_items = n_items
        self.seen: list[torch.Tensor] = []

    def full_sort_predict(self, batch: dict) -> torch.Tensor:
        self.seen.append(batch["seq"].clone())
        return torch.zeros(batch["seq"].shape[0], self.n_items + 1)


def key_of(ds, user: int) -> str:
    return str(ds.users.set_index("user").loc[user, "user_key"])


def user_history(ds, user: int) -> np.ndarray:
    inter = ds.interactions
    return inter.loc[inter.user == user, "item"].to_numpy()


def test_lists_match_the_models_own_ranking_without_seen_items(rec, tiny_dataset) -> None:
    top = rec.for_users([key_of(tiny_dataset, 1), key_of(tiny_dataset, 2)], k=5)
    seqs = torch.from_numpy(tiny_dataset.split("all").padded(rec.max_len)[:2])
    with torch.no_grad():
        scores = rec.model.full_sort_predict({"seq": seqs}).numpy()
    for row, user in enumerate((1, 2)):
        seen = set(user_history(tiny_dataset, user))
        assert not seen & set(top.items[row])
        allowed = [i for i in range(1, rec.n_items + 1) if i not in seen]
        expected = sorted(allowed, key=lambda i: -scores[row, i])[:5]
        assert list(top.items[row]) == expected
        assert np.allclose(top.scores[row], scores[row, expected])


def test_known_users_are_scored_after_their_whole_history(rec, tiny_dataset) -> None:
    stub = Recording(rec.n_items)
    rec_stub = Recommender(load_trained_run(rec.run.path))
    rec_stub.model = stub
    rec_stub.for_users([key_of(tiny_dataset, 3)], k=2)
    history = user_history(tiny_dataset, 3)  # includes the validation and test items
    last = history[-rec.max_len:]
    assert stub.seen[0][0, -len(last):].tolist() == last.tolist()


def test_ties_go_to_the_lower_item_id_and_seen_items_can_be_kept(rec) -> None:
    stub_rec = Recommender(load_trained_run(rec.run.path))
    stub_rec.model = Recording(rec.n_items)
    top = stub_rec.for_histories([[2, 4]], k=4)
    assert top.items.tolist() == [[1, 3, 5, 6]]
    kept = stub_rec.for_histories([[2, 4]], k=4, exclude_seen=False)
    assert kept.items.tolist() == [[1, 2, 3, 4]]


def test_a_history_that_covers_the_catalogue_gives_a_short_list(rec) -> None:
    every = list(range(1, rec.n_items))  # all but the last item
    top = rec.for_histories([every], k=3)
    assert top.items[0, 0] == rec.n_items and top.items[0, 1:].tolist() == [0, 0]
    assert len(rec.table(top, ["h"])) == 1


def test_unknown_users_and_items_are_named(rec) -> None:
    with pytest.raises(DmesrError, match=r"1 unknown user key.*: nobody"):
        rec.for_users([rec.user_keys[0], "nobody"])
    with pytest.raises(DmesrError, match=r"position 1: item key 'zzz'"):
        rec.item_ids([rec.item_keys[1], "zzz"])
    assert rec.item_ids([rec.item_keys[1], "zzz", rec.item_keys[2]], "skip") == [1, 2]
    with pytest.raises(DmesrError, match=r"item ids must be in 1\.\."):
        rec.for_histories([[0, 1]])


def test_not_a_run_directory(run_dir, tmp_path) -> None:
    with pytest.raises(DmesrError, match=r"not a run directory.*dmesr train --out"):
        Recommender.from_run(tmp_path)
    (tmp_path / "seed7").symlink_to(run_dir)  # `dmesr train --seeds` writes OUT/seed<N>
    with pytest.raises(DmesrError, match=r"one run per seed: .*seed7"):
        Recommender.from_run(tmp_path)


def test_cli_writes_lists_with_their_provenance(run_dir, rec, tmp_path) -> None:
    out = tmp_path / "recs.parquet"
    result = CliRunner().invoke(recommend, ["--run", str(run_dir), "--all-users", "-k", "3",
                                            "--history", f"{rec.item_keys[1]},{rec.item_keys[5]}",
                                            "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out)
    n_users = len(rec.user_keys)
    assert len(table) == (n_users + 1) * 3
    assert list(table.columns[:4]) == ["user_key", "rank", "item_key", "score"]
    first = table[table.user_key == "history 1"]
    assert not {rec.item_keys[1], rec.item_keys[5]} & set(first.item_key)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["run"] == str(run_dir) and meta["k"] == 3 and meta["rows"] == len(table)
    assert meta["dataset_hash"] == rec.run.dataset.content_hash


def test_cli_prints_every_row_when_piped(run_dir, rec) -> None:
    result = CliRunner().invoke(recommend, ["--run", str(run_dir), "--all-users", "-k", "2"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + 2 * len(rec.user_keys)  # header + every row: nothing cut
    assert "more rows not shown" not in result.stderr


def test_terminal_output_is_cut_with_a_note(capsys) -> None:
    frame = pd.DataFrame({"user_key": np.arange(TERMINAL_ROWS + 57), "rank": 1})
    echo_table(frame, to_terminal=True)
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 + TERMINAL_ROWS
    assert "57 more rows not shown: --out FILE" in err
    echo_table(frame.head(3), to_terminal=True)
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 4 and err == ""


def test_cli_needs_someone_to_recommend_for(run_dir) -> None:
    result = CliRunner().invoke(recommend, ["--run", str(run_dir)])
    assert result.exit_code != 0 and "say for whom" in result.output


@pytest.fixture
def server(rec):
    srv = make_server(rec, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def post(url: str, body: object) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_http_answers_like_the_api_and_rejects_bad_requests(server, rec) -> None:
    first, second = rec.user_keys[:2]
    with urllib.request.urlopen(server + "/health", timeout=30) as resp:
        assert json.loads(resp.read())["model"]["items"] == rec.n_items
    status, body = post(server + "/recommend", {"user": first, "k": 4})
    assert status == 200
    items = body["results"][0]["items"]
    assert [i["item_key"] for i in items] == list(rec.item_keys[rec.for_users([first], 4).items[0]])
    status, body = post(server + "/recommend", {"users": [first, second], "k": 2})
    assert status == 200 and [r["user"] for r in body["results"]] == [first, second]
    status, body = post(server + "/recommend", {"history": [rec.item_keys[3]], "k": 2})
    assert status == 200 and body["results"][0]["user"] is None
    for bad, message in [({"user": "nobody"}, "unknown user"), ({"k": 3}, "exactly one"),
                         ({"user": first, "k": "3"}, "'k' must be int"),
                         ({"user": first, "kk": 3}, "unknown field")]:
        status, body = post(server + "/recommend", bad)
        assert status == 400 and message in body["error"]
    status, body = post(server + "/nowhere", {})
    assert status == 404


def test_latency_benchmark_runs_on_a_run(run_dir) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from recommend_latency import measure

    row = measure(run_dir, k=3, n_single=4)
    assert row["users"] > 0 and row["all_users_per_s"] > 0
    assert 0 < row["single_ms_median"] <= row["single_ms_p95"]


@pytest.mark.parametrize("split", ["valid", "test"])
def test_lists_as_of_evaluation_reproduce_the_runs_hit_rate(split, run_dir, rec) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for k in (5, 10, 20):
        top = rec.for_users(rec.user_keys, k, as_of=split)
        hits = (top.items == top.targets[:, None]).any(axis=1)
        assert hits.mean() == pytest.approx(metrics[f"{split}.full.HR@{k}"], abs=1e-9)
    table = rec.table(top, rec.user_keys)
    assert table["hit"].sum() == hits.sum()
    assert (table.loc[table.hit, "item_key"] == table.loc[table.hit, "target_item_key"]).all()


def test_serve_command_answers_then_stops_cleanly_on_sigterm(run_dir) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dmesr.cli", "serve", "--run", str(run_dir), "--port", "0"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        line = proc.stderr.readline()  # "serving RUN on http://HOST:PORT ..."
        url = re.search(r"http://\S+", line).group(0)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as resp:
                    assert json.loads(resp.read())["status"] == "ok"
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline, "the server did not answer"
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        proc.kill()
