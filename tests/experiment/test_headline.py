"""Cross-dataset headline table from results folders (`dmesr report --headline`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from dmesr.cli import cli
from dmesr.errors import DmesrError
from dmesr.report.headline import headline_table


def _results(folder: Path, dataset: str, values: dict[str, list[float]], p: float) -> Path:
    folder.mkdir(parents=True)
    rows = [{"dataset": dataset, "backbone": "sasrec", "variant": v, "seed": 2026 + i,
             "kind": "main", "test_full_NDCG@10": x}
            for v, xs in values.items() for i, x in enumerate(xs)]
    rows.append({"dataset": dataset, "backbone": "sasrec", "variant": "dmesr-no_id",
                 "seed": 2026, "kind": "ablation", "test_full_NDCG@10": 0.5})
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    tests = [{"backbone": "sasrec", "variant": "dmesr", "baseline": "id", "p": p,
              "diff": 0.2 if p < 0.05 else -0.05}]
    (folder / "significance.json").write_text(json.dumps({"tests": tests}))
    return folder


def test_headline_table_means_stds_and_p_values(tmp_path: Path) -> None:
    a = _results(tmp_path / "a", "ml", {"id": [0.1, 0.2, 0.3], "dmesr": [0.3, 0.4, 0.5]}, 0.01)
    b = _results(tmp_path / "b", "hm", {"id": [0.2], "dmesr": [0.25]}, 0.3)
    lines = headline_table([a, b]).splitlines()
    assert lines[0] == "| backbone | variant | ml | hm |"
    assert lines[2] == "| sasrec | id | 0.2000 ± 0.1000 | 0.2000 [1 seed] |"
    assert lines[3] == ("| sasrec | dmesr | 0.4000 ± 0.1000 (id p=0.01* ↑) | "
                        "0.2500 (id p=0.3 ↓) [1 seed] |")
    assert len(lines) == 4  # ablations stay in each dataset's own report


def test_headline_cli_and_missing_folder(tmp_path: Path) -> None:
    a = _results(tmp_path / "a", "ml", {"id": [0.1]}, 0.5)
    res = CliRunner().invoke(cli, ["report", "--headline", str(a)])
    assert res.exit_code == 0, res.output
    assert "| sasrec | id | 0.1000 [1 seed] |" in res.output
    (tmp_path / "empty").mkdir()
    with pytest.raises(DmesrError, match=r"results\.csv: not found"):
        headline_table([tmp_path / "empty"])
