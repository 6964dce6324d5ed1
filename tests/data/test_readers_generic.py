"""Generic reader (CSV/TSV/Parquet + items + images) and the real H&M sample through hm.yaml."""

from __future__ import annotations

import csv
import gzip
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dmesr.config import load_config
from dmesr.data.readers import get_reader
from dmesr.data.schema import DatasetConfig, RawData
from dmesr.errors import ConfigError, DataError, ErrorPolicy

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "fixtures" / "generic"
INTER = FIX / "interactions.csv"
ITEMS = FIX / "items.csv"
HEADER = "user,item,timestamp,rating"


def read(mode: str = "raise", text_fields: list[str] | None = None, **kw: Any,
         ) -> tuple[RawData, ErrorPolicy]:
    paths = {k: str(kw.pop(k)) for k in ("interactions", "items", "image_root") if k in kw}
    paths.setdefault("interactions", str(INTER))
    cfg = DatasetConfig(name="g", format="generic", paths=paths, options=kw,
                        text_fields=text_fields)
    policy = ErrorPolicy(mode)  # type: ignore[arg-type]
    return get_reader("generic")(cfg, policy), policy


def write(tmp_path: Path, name: str, lines: list[str | bytes]) -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def csv_records(path: Path) -> list[dict[str, str]]:
    """Independent reading with the csv module (blank lines dropped)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if any(r.values())]


# ---------------------------------------------------------------- happy paths


def test_csv_interactions_items_and_images() -> None:
    raw, policy = read(items=ITEMS, image_column="image")
    inter = raw.interactions
    expected = csv_records(INTER)
    assert len(inter) == len(expected) == 5 and policy.n_rejected == 0
    assert inter["item_key"].tolist() == [r["item"] for r in expected]  # leading zeros kept
    assert inter["timestamp"].tolist() == [int(r["timestamp"]) * 1000 for r in expected]
    assert str(inter["timestamp"].dtype) == "int64"
    rating = inter["rating"].tolist()
    assert rating[:3] == [5.0, 4.0, 3.0] and math.isnan(rating[3]) and rating[4] == 2.5

    items = raw.items
    assert items["item_key"].tolist() == ["0108775015", "0108775044", "0110065001"]
    # default text: string columns except id and image; 'price' is numeric, so not text
    assert raw.text_fields == ["name", "colour", "description"]
    assert items["description"][0] == ("Jersey top with narrow shoulder straps,\n"
                                       "and a rounded neckline.")
    assert items["description"][2] is None
    assert items["image_ref"].tolist() == [
        str(FIX / "img" / "0108775015.jpg"),  # relative to the items file's folder
        "https://example.org/0108775044.jpg",
        "/abs/0110065001.jpg",
    ]
    assert raw.sources == [INTER, ITEMS]


def test_text_columns_option_text_fields_and_errors() -> None:
    raw, _ = read(items=ITEMS, text_columns=["colour", "price"])
    assert raw.text_fields == ["colour", "price"]
    assert raw.items["price"].tolist() == ["12.5", "12.5", None]
    raw, _ = read(items=ITEMS, text_columns=["colour"], text_fields=["name"])
    assert raw.text_fields == ["name"]  # text_fields, the cross-format knob, wins
    with pytest.raises(ConfigError, match=r"unknown text column\(s\) 'title'; available: name, "
                                          r"colour, price, image, description"):
        read(items=ITEMS, text_fields=["title"])
    with pytest.raises(ConfigError, match=r"unknown option.*text_column"):
        read(items=ITEMS, text_column=["name"])
    with pytest.raises(ConfigError, match="timestamp_format"):
        read(timestamp_format="seconds")
    with pytest.raises(ConfigError, match=r"options\.columns maps roles"):
        read(columns={"usr": "user"})


def test_image_template_slices_and_columns(tmp_path: Path) -> None:
    raw, _ = read(items=ITEMS, image_root=tmp_path,
                  image_template="images/{item_key[0:3]}/{colour}-{item_key[-3:]}.jpg")
    assert raw.items["image_ref"].tolist()[:2] == [
        str(tmp_path / "images/010/Black-015.jpg"), str(tmp_path / "images/010/White-044.jpg")]
    # no items table: items come from the interactions, in first-seen order
    raw, _ = read(image_template="{item_key}.png")
    assert raw.items["item_key"].tolist() == ["0108775015", "0108775044", "0110065001"]
    assert raw.items["image_ref"][0] == str(FIX / "0108775015.png")
    assert raw.text_fields == []
    with pytest.raises(ConfigError, match="names 'sku', which is not one of: item_key, item"):
        read(items=ITEMS, image_template="{sku}.jpg")
    with pytest.raises(ConfigError, match="placeholders only"):
        read(items=ITEMS, image_template="{item_key[0]}.jpg")


@pytest.mark.parametrize("kind", ["tsv", "csv.gz", "parquet"])
def test_tsv_gzip_parquet_give_the_same_result(tmp_path: Path, kind: str) -> None:
    rows = csv_records(INTER)
    path = tmp_path / f"inter.{kind}"
    if kind == "parquet":
        table = pa.table({c: [r[c] for r in rows] for c in rows[0]})
        pq.write_table(table, path)
    else:
        sep = "\t" if kind == "tsv" else ","
        text = "\n".join([sep.join(rows[0])] + [sep.join(r.values()) for r in rows]) + "\n"
        path.write_bytes(gzip.compress(text.encode()) if kind.endswith("gz") else text.encode())
    ref, _ = read()
    raw, _ = read(interactions=path)
    assert raw.interactions.equals(ref.interactions)


def test_parquet_native_types_and_int_ids(tmp_path: Path) -> None:
    path = tmp_path / "inter.parquet"
    pq.write_table(pa.table({
        "u": pa.array([1, 2]), "i": pa.array([108775015, 42]),
        "when": pa.array([datetime(2020, 1, 1), datetime(2020, 1, 2)], pa.timestamp("s")),
    }), path)
    raw, _ = read(interactions=path, columns={"user": "u", "item": "i", "timestamp": "when"})
    assert raw.interactions["item_key"].tolist() == ["108775015", "42"]
    assert raw.interactions["timestamp"][0] == 1577836800000
    assert raw.interactions["rating"].isna().all()  # no rating column: NaN, not an error
    assert any("cannot be recovered" in n for n in raw.notes)


@pytest.mark.parametrize(
    ("fmt", "values", "expected_ms"),
    [
        ("unix_ms", ["1600000000123"], 1600000000123),
        ("unix_s", ["1600000000.5"], 1600000000500),
        ("iso", ["2020-09-13T12:26:40+02:00"], 1599992800000),
        ("iso", ["2020-09-13 12:26:40"], 1600000000000),  # naive: UTC
        ("%Y-%m-%d", ["2018-09-20"], int(datetime(2018, 9, 20, tzinfo=timezone.utc)
                                          .timestamp()) * 1000),
        ("%d/%m/%Y %H:%M", ["20/09/2018 10:30"], 1537439400000),
    ],
)
def test_timestamp_formats(tmp_path: Path, fmt: str, values: list[str], expected_ms: int) -> None:
    path = write(tmp_path, "i.csv", ["u,i,t"] + [f'a,b,"{v}"' for v in values])
    raw, _ = read(interactions=path, columns={"user": "u", "item": "i", "timestamp": "t"},
                  timestamp_format=fmt)
    assert raw.interactions["timestamp"].tolist() == [expected_ms]


# ---------------------------------------------------------------- bad input


def test_missing_column_lists_available(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"interactions\.csv:1: field 'ts': column not found; "
                                        r"available columns: user, item, timestamp, rating"):
        read(columns={"timestamp": "ts"})
    with pytest.raises(DataError, match=r"items\.csv:1: field 'article_id': column not found"):
        read(items=ITEMS, item_id_column="article_id")
    with pytest.raises(DataError, match=r"interactions\.csv:1: field 'score': column not found"):
        read(columns={"rating": "score"})  # a rating column named explicitly must exist
    pq.write_table(pa.table({"user": ["a"], "item": ["b"]}), tmp_path / "x.parquet")
    with pytest.raises(DataError, match=r"x\.parquet: field 'timestamp': column not found; "
                                        r"available columns: user, item"):
        read(interactions=tmp_path / "x.parquet")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("u9,0108775015,1600000000,five", r"field 'rating': expected a number, got 'five'"),
        ("u9,0108775015,yesterday,5", r"field 'timestamp': expected a unix time in seconds, "
                                      r"got 'yesterday'"),
        ("u9,,1600000000,5", r"field 'item': expected a non-empty id, got ''"),
    ],
)
def test_bad_value_names_editor_line(tmp_path: Path, row: str, message: str) -> None:
    # a quoted newline (line 2-3) and a blank line (4) sit before the bad row on line 6
    lines = [HEADER + ",note", 'u1,0108775015,1600000000,5,"two', 'lines"', "",
             "u1,0108775044,1600000100,4,x", row + ",y", "u2,0110065001,1600000200,3,z"]
    path = write(tmp_path, "i.csv", lines)
    with pytest.raises(DataError, match=rf"i\.csv:6: {message}"):
        read(interactions=path)
    raw, policy = read("skip", interactions=path)
    assert len(raw.interactions) == 3 and policy.n_rejected == 1
    assert policy.rejects[0].line == 6


def test_first_bad_row_in_file_order_across_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "i.csv", [HEADER, "u1,a,1,x", "u1,b,nope,1", "u1,c,3,3"])
    with pytest.raises(DataError, match=r"i\.csv:2: field 'rating'"):
        read(interactions=path)
    raw, policy = read("skip", interactions=path)
    assert [(r.line, r.field) for r in policy.rejects] == [(2, "rating"), (3, "timestamp")]
    assert raw.interactions["item_key"].tolist() == ["c"]


def test_wrong_field_count_non_utf8_and_skip_counts(tmp_path: Path) -> None:
    lines: list[str | bytes] = [HEADER, "u1,a,1,1", "u1,b,2", "u1,c,3,3",
                                b"u1,caf\xe9,4,4", "u1,d,5,5,extra", "u1,e,6,6"]
    path = write(tmp_path, "i.csv", lines)
    with pytest.raises(DataError, match=r"i\.csv:3: expected 4 fields, got 3"):
        read(interactions=path)
    raw, policy = read("skip", interactions=path)
    assert [r.line for r in policy.rejects] == [3, 5, 6]
    assert "not valid UTF-8 (byte 0xe9" in policy.rejects[1].message
    assert raw.interactions["item_key"].tolist() == ["a", "c", "e"]
    utf = write(tmp_path, "u.csv", [HEADER, "u1,a,1,1", b"u1,caf\xe9,4,4"])
    with pytest.raises(DataError, match=r"u\.csv:3: not valid UTF-8 \(byte 0xe9 at byte 7"):
        read(interactions=utf)


def test_truncated_gzip_csv(tmp_path: Path) -> None:
    text = HEADER + "\n" + "".join(f"u{i % 7},i{i},{1600000000 + i},4\n" for i in range(5000))
    data = gzip.compress(text.encode())
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.csv\.gz:\d+: compressed stream ends abruptly"):
        read(interactions=path)
    raw, policy = read("skip", interactions=path)
    kept = len(raw.interactions)
    assert policy.n_rejected == 1 and 0 < kept < 5000
    assert policy.rejects[0].line == kept + 1  # the header is line 1


def test_empty_files(tmp_path: Path) -> None:
    empty = write(tmp_path, "e.csv", [])
    with pytest.raises(DataError, match=r"e\.csv:1: file is empty: expected a header line"):
        read(interactions=empty)
    raw, policy = read("skip", interactions=empty)
    assert len(raw.interactions) == 0 and policy.n_rejected == 1
    header_only = write(tmp_path, "h.csv", [HEADER])
    assert len(read(interactions=header_only)[0].interactions) == 0


def test_parquet_bad_value_names_row(tmp_path: Path) -> None:
    path = tmp_path / "i.parquet"
    pq.write_table(pa.table({"user": ["a", "b"], "item": ["x", "y"],
                             "timestamp": ["1", "later"]}), path)
    with pytest.raises(DataError, match=r"i\.parquet: field 'timestamp': row 2: expected a unix "
                                        r"time in seconds, got 'later'"):
        read(interactions=path)


def test_duplicate_item_rows(tmp_path: Path) -> None:
    items = write(tmp_path, "items.csv", ["item,name", "0108775015,A", "0110065001,B",
                                          "0108775015,C"])
    with pytest.raises(DataError, match=r"items\.csv:4: field 'item': duplicate item id "
                                        r"'0108775015' \(the first row with it is kept\)"):
        read(items=items)
    raw, policy = read("skip", items=items)
    assert raw.items["name"].tolist() == ["A", "B"] and policy.n_rejected == 1


def test_ten_thousand_rows_vectorised(tmp_path: Path) -> None:
    """Sanity on size: counts match an independent csv-module read."""
    lines = [HEADER] + [f"u{i % 97},{i % 1013:010d},{1_500_000_000 + i},{i % 5 + 1}"
                        for i in range(10_000)]
    path = write(tmp_path, "big.csv", lines)
    raw, _ = read(interactions=path)
    recs = csv_records(path)
    assert len(raw.interactions) == len(recs)
    assert raw.interactions["item_key"].nunique() == len({r["item"] for r in recs})
    assert raw.interactions["item_key"].iloc[5] == recs[5]["item"] == "0000000005"


# ---------------------------------------------------------------- real data: H&M


@pytest.mark.realdata
def test_hm_through_config(shared_data: Path) -> None:
    folder = shared_data / "hm-sample-1364u"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    cfg = load_config(DatasetConfig, [REPO / "configs" / "datasets" / "hm.yaml"])
    raw = get_reader(cfg.format)(cfg, ErrorPolicy())

    with open(folder / "transactions_train_sample.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    inter = raw.interactions
    assert len(inter) == len(rows) == 31_662
    assert inter["user_key"].nunique() == len({r["customer_id"] for r in rows}) == 1_364
    article_ids = {r["article_id"] for r in rows}
    assert inter["item_key"].nunique() == len(article_ids) == 17_033
    assert inter["item_key"].tolist() == [r["article_id"] for r in rows]  # '0…' kept
    assert inter["timestamp"].min() == int(
        datetime(2018, 9, 20, tzinfo=timezone.utc).timestamp()) * 1000
    # exact duplicate rows and repeated (customer, article) pairs, as SOURCE.md counts them
    full = [tuple(r.values()) for r in rows]
    assert len(full) - len(set(full)) == 2_894
    pairs = [(r["customer_id"], r["article_id"]) for r in rows]
    assert len(pairs) - len(set(pairs)) == 4_219

    items = raw.items
    assert len(items) == 17_033 and set(items["item_key"]) == article_ids
    assert raw.text_fields[:2] == ["prod_name", "product_type_name"]
    assert items["detail_desc"].isna().sum() == 62
    first = items.iloc[0]
    assert first["image_ref"] == str(
        folder.resolve() / "images" / first["item_key"][:3] / f"{first['item_key']}.jpg")
    assert all(Path(p).is_file() for p in items["image_ref"].head(200))
