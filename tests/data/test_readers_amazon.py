"""Amazon 2014 / 2018 / 2023 readers: upstream-format fixtures, gzip, and every bad-input case."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from dmesr.data.readers import get_reader
from dmesr.data.schema import DatasetConfig, RawData
from dmesr.errors import ConfigError, DataError, ErrorPolicy

FIX = Path(__file__).resolve().parents[1] / "fixtures"
R14 = FIX / "amazon2014" / "reviews_Toys_and_Games_5.json"
M14 = FIX / "amazon2014" / "meta_Toys_and_Games.json"
R18 = FIX / "amazon2018" / "Toys_and_Games_5.json"
M18 = FIX / "amazon2018" / "meta_Toys_and_Games.json"
R23 = FIX / "amazon2023" / "Toys_and_Games.jsonl"
M23 = FIX / "amazon2023" / "meta_Toys_and_Games.jsonl"

GOOD = {"reviewerID": "U9", "asin": "0439893577", "overall": 4.0, "unixReviewTime": 1400000000}


def read(fmt: str, reviews: Path, meta: Path, mode: str = "raise",
         **extra: object) -> tuple[RawData, ErrorPolicy]:
    cfg = DatasetConfig(name="t", format=fmt, paths={"reviews": str(reviews), "meta": str(meta)},
                        **extra)
    policy = ErrorPolicy(mode)  # type: ignore[arg-type]
    return get_reader(fmt)(cfg, policy), policy


def json_lines(path: Path) -> list[dict]:
    """Independent count: the plain json module over non-blank lines."""
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# ---------------------------------------------------------------- happy paths


def test_2014_reviews_and_python_literal_meta() -> None:
    raw, policy = read("amazon2014", R14, M14)
    inter = raw.interactions
    expected = json_lines(R14)
    assert len(inter) == len(expected) == 6 and policy.n_rejected == 0
    assert list(inter.columns) == ["user_key", "item_key", "timestamp", "rating"]
    assert inter["user_key"].tolist() == [r["reviewerID"] for r in expected]  # file order
    assert inter["timestamp"].tolist() == [r["unixReviewTime"] * 1000 for r in expected]
    assert str(inter["timestamp"].dtype) == "int64" and str(inter["rating"].dtype) == "float64"
    # only reviewed items (the tutu is in meta but never reviewed), first-seen meta order
    items = raw.items.set_index("item_key")
    assert set(items.index) == {"0439893577", "0545496470", "B000F8T8U0"}
    easel = items.loc["0439893577"]
    assert raw.text_fields == ["title", "brand", "categories", "description", "price"]
    assert easel["categories"] == ("Toys & Games > Arts & Crafts > Easels; "
                                   "Toys & Games > Learning & Education")
    assert easel["description"] == "A double-sided magnetic easel & chalkboard."
    assert easel["price"] == "$32.99"
    assert easel["image_ref"].startswith("http://ecx.images-amazon.com/images/I/51%2BjKvMVVKL")
    assert items.loc["0545496470", "price"] is None  # no price: missing, not ""
    assert items.loc["B000F8T8U0", "image_ref"] is None
    assert raw.sources == [R14, M14]


def test_gzip_detected_by_magic_not_name(tmp_path: Path) -> None:
    reviews, meta = tmp_path / "reviews.json", tmp_path / "meta.gz.txt"
    reviews.write_bytes(gzip.compress(R14.read_bytes()))
    meta.write_bytes(gzip.compress(M14.read_bytes()))
    plain = tmp_path / "plain.json.gz"  # a .gz name on a plain file
    shutil.copy(R14, plain)
    raw, _ = read("amazon2014", reviews, meta)
    raw2, _ = read("amazon2014", plain, meta)
    ref, _ = read("amazon2014", R14, M14)
    assert raw.interactions.equals(ref.interactions) and raw2.interactions.equals(ref.interactions)
    assert raw.items.equals(ref.items)


def test_2018_lists_html_junk_price_and_duplicate_meta() -> None:
    raw, _ = read("amazon2018", R18, M18)
    assert len(raw.interactions) == len(json_lines(R18)) == 4
    items = raw.items.set_index("item_key")
    assert set(items.index) == {"B0000530HU", "B00004TFLB"}  # B00NOMETA1 has no meta row
    c4 = items.loc["B0000530HU"]
    assert c4["title"] == "Hasbro Connect 4"  # the repeated row later on is ignored
    assert c4["description"] == "Classic strategy game. For 2 players & up."
    assert c4["features"] == "Drop the discs; Get 4 in a row"
    assert c4["categories"] == "Toys & Games > Games > Board Games"
    assert c4["price"] == "$12.99"
    assert c4["image_ref"] == "https://images-na.ssl-images-amazon.com/images/I/41abc.jpg"
    puzzle = items.loc["B00004TFLB"]
    assert puzzle["price"] is None  # scraped CSS, not a price
    assert puzzle["image_ref"].endswith("31xyz._SS40_.jpg")  # no hi-res: the small one
    assert any("1 repeated asin rows ignored" in n for n in raw.notes)
    assert any("1 reviewed items have no metadata" in n for n in raw.notes)


def test_2023_parent_asin_main_image_and_variants() -> None:
    raw, _ = read("amazon2023", R23, M23)
    inter = raw.interactions
    assert inter["item_key"].tolist() == ["B07R4TQ1ZK", "B09PARENT1", "B09PARENT1", "B07R4TQ1ZK"]
    assert inter["timestamp"].tolist() == [r["timestamp"] for r in json_lines(R23)]  # already ms
    items = raw.items.set_index("item_key")
    blocks = items.loc["B07R4TQ1ZK"]
    # MAIN comes first even though listed second; it has no hi_res, so its large image
    assert blocks["image_ref"] == "https://m.media-amazon.com/images/I/2l.jpg"
    assert blocks["features"] == "Natural wood; Non-toxic paint"
    assert blocks["price"] == "$19.99"
    assert blocks["store"] == "Melissa & Doug"
    assert items.loc["B09PARENT1", "image_ref"] == "https://m.media-amazon.com/images/I/3h._SL1500_.jpg"
    assert items.loc["B09PARENT1", "categories"] is None

    variants, _ = read("amazon2023", R23, M23, options={"item_key": "asin"})
    vitems = variants.items.set_index("item_key")
    assert set(variants.interactions["item_key"]) == {"B07R4TQ1ZK", "B09RED0001", "B09BLUE001"}
    assert vitems.loc["B09RED0001", "title"] == vitems.loc["B09BLUE001", "title"] == (
        "Bouncy Ball (2 colours)")


def test_text_fields_select_and_order() -> None:
    raw, _ = read("amazon2023", R23, M23, text_fields=["details", "title", "brand"])
    assert raw.text_fields == ["details", "title", "brand"]
    assert list(raw.items.columns) == ["item_key", "details", "title", "brand", "image_ref"]
    blocks = raw.items.set_index("item_key").loc["B07R4TQ1ZK"]
    assert blocks["details"] == ("Brand: Melissa & Doug; Item Weight: 1.2 pounds; "
                                 "Best Sellers Rank: Toys & Games: 1234")
    assert blocks["brand"] == "Melissa & Doug"


def test_unknown_text_field_and_option_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown text field\(s\) 'colour'; available: title, "
                                          r"brand, categories, description, price, sales_rank"):
        read("amazon2014", R14, M14, text_fields=["title", "colour"])
    with pytest.raises(ConfigError, match="unknown option"):
        read("amazon2014", R14, M14, options={"item_key": "asin"})
    with pytest.raises(ConfigError, match="parent_asin or asin"):
        read("amazon2023", R23, M23, options={"item_key": "sku"})
    with pytest.raises(ConfigError, match=r"input file not found: .*nowhere\.json"):
        read("amazon2014", R14.parent / "nowhere.json", M14)
    with pytest.raises(ConfigError, match=r"needs paths\.meta"):
        get_reader("amazon2018")(DatasetConfig(name="t", format="amazon2018",
                                               paths={"reviews": str(R18)}), ErrorPolicy())


# ---------------------------------------------------------------- bad input


def write_reviews(tmp_path: Path, lines: list[str | bytes], name: str = "r.json") -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def bad(**changes: object) -> str:
    rec = {**GOOD, **changes}
    return json.dumps({k: v for k, v in rec.items() if v is not ...})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"reviewerID": "U9", "asin": ', r"r\.json:3: neither valid JSON \(.*\) nor a Python literal"),
        ("[1, 2]", r"r\.json:3: expected an object \{\.\.\.\} per line, got list"),
        (bad(overall=...), r"r\.json:3: field 'overall': missing \(the record has: reviewerID, "
                           r"asin, unixReviewTime\)"),
        (bad(overall="five"), r"r\.json:3: field 'overall': expected a number, got 'five'"),
        (bad(unixReviewTime="yesterday"),
         r"r\.json:3: field 'unixReviewTime': expected a unix time \(integer\), got 'yesterday'"),
        (bad(reviewerID=""), r"r\.json:3: field 'reviewerID': expected a non-empty string id"),
        (b'{"reviewerID": "caf\xe9", "asin": "x", "overall": 1, "unixReviewTime": 1}',
         r"r\.json:3: not valid UTF-8 \(byte 0xe9 at byte 20 of the line\)"),
    ],
)
def test_bad_review_line_names_file_line_field(tmp_path: Path, line: str | bytes,
                                               message: str) -> None:
    # a blank line 2 must still count: the bad record is on editor line 3
    reviews = write_reviews(tmp_path, [bad(), "", line, bad()])
    with pytest.raises(DataError, match=message):
        read("amazon2014", reviews, M14)
    raw, policy = read("amazon2014", reviews, M14, mode="skip")
    assert len(raw.interactions) == 2 and policy.n_rejected == 1
    assert policy.rejects[0].line == 3 and policy.rejects[0].file == str(reviews)


def test_bad_meta_line_and_literal_fallback_failure(tmp_path: Path) -> None:
    meta = tmp_path / "meta.json"
    meta.write_text(M14.read_text() + "{'asin': '0439893577', 'title': 'cut\n{'title': 'no asin'}\n")
    with pytest.raises(DataError, match=r"meta\.json:5: neither valid JSON"):
        read("amazon2014", R14, meta)
    raw, policy = read("amazon2014", R14, meta, mode="skip")
    assert [(r.line, r.field) for r in policy.rejects] == [(5, None), (6, "asin")]
    assert len(raw.items) == 3


def test_empty_file(tmp_path: Path) -> None:
    empty = write_reviews(tmp_path, [])
    with pytest.raises(DataError, match=r"r\.json:1: file is empty: expected one JSON object"):
        read("amazon2018", empty, M18)
    blank = write_reviews(tmp_path, ["", "  "], "blank.json")
    with pytest.raises(DataError, match=r"blank\.json:1: file is empty"):
        read("amazon2018", blank, M18)


def test_truncated_gzip_names_last_line_and_keeps_what_was_read(tmp_path: Path) -> None:
    lines = [bad(reviewerID=f"U{i}", unixReviewTime=1_400_000_000 + i) for i in range(3000)]
    data = gzip.compress(("\n".join(lines) + "\n").encode())
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.json\.gz:\d+: compressed stream ends abruptly "
                                        r"after line \d+ \(file truncated or corrupt"):
        read("amazon2014", cut, M14)
    raw, policy = read("amazon2014", cut, M14, mode="skip")
    assert policy.n_rejected == 1
    kept = len(raw.interactions)
    assert 0 < kept < 3000
    assert policy.rejects[0].line == kept  # the last line reached
    assert raw.interactions["user_key"].tolist() == [f"U{i}" for i in range(kept)]


def test_skip_mode_counts_every_reject(tmp_path: Path) -> None:
    reviews = write_reviews(tmp_path, [bad(), "nope", bad(overall=None), bad(asin=7), bad()])
    raw, policy = read("amazon2018", reviews, M18, mode="skip")
    assert policy.n_rejected == 2
    assert [(r.line, r.field) for r in policy.rejects] == [(2, None), (3, "overall")]
    assert raw.interactions["item_key"].tolist() == ["0439893577", "7", "0439893577"]


@pytest.mark.parametrize(
    ("fmt", "reviews", "meta", "options"),
    [("amazon2014", R14, M14, {}), ("amazon2018", R18, M18, {}), ("amazon2023", R23, M23, {}),
     ("amazon2023", R23, M23, {"item_key": "asin"})],
)
def test_fast_and_line_by_line_paths_agree(monkeypatch: pytest.MonkeyPatch, fmt: str,
                                           reviews: Path, meta: Path, options: dict) -> None:
    """pyarrow parses clean reviews files; the line-by-line path must give the same data."""
    import dmesr.data.readers.amazon as amazon

    fast, _ = read(fmt, reviews, meta, options=options)
    monkeypatch.setattr(amazon, "fast_table", lambda *a: None)
    slow, _ = read(fmt, reviews, meta, options=options)
    assert fast.interactions.equals(slow.interactions)
    assert fast.items.equals(slow.items)
