"""Yelp Open Dataset reader: reviews, businesses, photo choice, bad input."""

from __future__ import annotations

import gzip
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from dmesr.data.readers import get_reader
from dmesr.data.readers.yelp import attributes_summary
from dmesr.data.schema import DatasetConfig, RawData
from dmesr.errors import ConfigError, DataError, ErrorPolicy

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "yelp"
REVIEWS = FIX / "yelp_academic_dataset_review.json"
BUSINESS = FIX / "yelp_academic_dataset_business.json"
PHOTOS = FIX / "photos.json"


def read(mode: str = "raise", options: dict | None = None,
         **paths: Path) -> tuple[RawData, ErrorPolicy]:
    given = {k: str(v) for k, v in {"reviews": REVIEWS, "business": BUSINESS, **paths}.items()}
    cfg = DatasetConfig(name="y", format="yelp", paths=given, options=options or {})
    policy = ErrorPolicy(mode)  # type: ignore[arg-type]
    return get_reader("yelp")(cfg, policy), policy


def test_reviews_businesses_and_photos(tmp_path: Path) -> None:
    raw, policy = read(photos=PHOTOS, photo_dir=tmp_path)
    expected = [json.loads(x) for x in REVIEWS.read_text().splitlines()]
    inter = raw.interactions
    assert len(inter) == len(expected) == 5 and policy.n_rejected == 0
    assert inter["item_key"].tolist() == [r["business_id"] for r in expected]
    first = datetime(2018, 7, 7, 22, 9, 11, tzinfo=timezone.utc)
    assert inter["timestamp"].iloc[0] == int(first.timestamp()) * 1000
    assert inter["rating"].tolist() == [3.0, 5.0, 3.0, 4.0, 1.0]

    items = raw.items.set_index("item_key")
    assert "Pns2l4eNsfO8kk83dixA6A" not in items.index  # never reviewed
    assert raw.text_fields == ["name", "categories", "location", "attributes", "caption"]
    diner = items.loc["XQfwVwDr-v0ZS3_CbbE5Xw"]
    # 'outside' outranks the earlier 'food' photo; of two 'outside' photos the first wins
    assert diner["image_ref"] == str(tmp_path.resolve() / "HCUdRJHHm_e0OCTlZetGLg.jpg")
    assert diner["caption"] == "Storefront on Bethlehem Pike"
    assert diner["location"] == "North Wales, PA"
    assert diner["attributes"] == ("noise level: average; price range: 2; accepts credit cards; "
                                   "wifi: free; ambience: classy, casual")
    kettle = items.loc["YjUWPpI6HXG530lwP-fb2A"]
    assert kettle["image_ref"].endswith("H52Er-uBg6rNrHcReWTD2w.jpg")  # inside beats menu
    spin = items.loc["7ATYjTIgM3jUlt4UM3IypQ"]
    assert spin["image_ref"] is None and spin["attributes"] is None  # only an 'other' photo
    assert raw.sources == [REVIEWS, BUSINESS, PHOTOS]


def test_photo_label_order_option_and_default_photo_dir(tmp_path: Path) -> None:
    shutil.copy(PHOTOS, tmp_path / "photos.json")
    (tmp_path / "photos").mkdir()  # the tarball layout: photos.json next to photos/
    raw, _ = read(photos=tmp_path / "photos.json",
                  options={"photo_labels": ["menu", "food"]})
    items = raw.items.set_index("item_key")
    assert items.loc["YjUWPpI6HXG530lwP-fb2A", "image_ref"] == str(
        (tmp_path / "photos" / "pve7D6NUrafHW3EAORYb1w.jpg").resolve())
    assert items.loc["YjUWPpI6HXG530lwP-fb2A", "caption"] is None  # empty caption
    assert items.loc["XQfwVwDr-v0ZS3_CbbE5Xw", "image_ref"].endswith("zsvj7vloL4L5jhYyPIuVwg.jpg")


def test_without_photos_no_images() -> None:
    raw, _ = read()
    assert raw.items["image_ref"].isna().all() and len(raw.items) == 3


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"photo_dir needs paths\.photos"):
        read(photo_dir=tmp_path)
    with pytest.raises(ConfigError, match="photo_labels must be a list"):
        read(photos=PHOTOS, options={"photo_labels": "food"})
    with pytest.raises(ConfigError, match="available: name, categories, location, address"):
        get_reader("yelp")(DatasetConfig(name="y", format="yelp", text_fields=["stars"],
                                         paths={"reviews": str(REVIEWS),
                                                "business": str(BUSINESS)}), ErrorPolicy())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"date": "2018-13-45 10:00:00"},
         r"r\.json:2: field 'date': expected a date-time like '2018-07-07 22:09:11', "
         r"got '2018-13-45 10:00:00'"),
        ({"stars": "many"}, r"r\.json:2: field 'stars': expected a number, got 'many'"),
        ({"user_id": None}, r"r\.json:2: field 'user_id': expected a non-empty string id, got None"),
        ({"business_id": ...}, r"r\.json:2: field 'business_id': missing \(the record has: "
                               r"review_id, user_id, stars, date\)"),
    ],
)
def test_bad_review_records(tmp_path: Path, change: dict, message: str) -> None:
    good = {"review_id": "r1", "user_id": "u1", "business_id": "XQfwVwDr-v0ZS3_CbbE5Xw",
            "stars": 4.0, "date": "2018-07-07 22:09:11"}
    rec = {k: v for k, v in {**good, **change}.items() if v is not ...}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(good) + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(DataError, match=message):
        read(reviews=path)
    raw, policy = read("skip", reviews=path)
    assert len(raw.interactions) == 1 and policy.n_rejected == 1


def test_python_literal_is_not_accepted_for_yelp(tmp_path: Path) -> None:
    # Yelp files are strict JSON: a literal line is an error, not a silent fallback
    path = tmp_path / "b.json"
    path.write_text(BUSINESS.read_text() + "{'business_id': 'x'}\n")
    with pytest.raises(DataError, match=r"b\.json:5: not valid JSON"):
        read(business=path)


def test_gzip_non_utf8_and_empty(tmp_path: Path) -> None:
    gz = tmp_path / "review.json"  # gzip without the .gz name
    gz.write_bytes(gzip.compress(REVIEWS.read_bytes()))
    assert len(read(reviews=gz)[0].interactions) == 5
    latin = tmp_path / "photos.json"
    latin.write_bytes(PHOTOS.read_bytes() + '{"photo_id":"p","business_id":"b","caption":"Caf\xe9",'
                      '"label":"food"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"photos\.json:8: not valid UTF-8"):
        read(photos=latin)
    empty = tmp_path / "business.json"
    empty.write_text("")
    with pytest.raises(DataError, match=r"business\.json:1: file is empty"):
        read(business=empty)


def test_attributes_summary_shapes() -> None:
    assert attributes_summary(None) is None
    assert attributes_summary({"HasTV": "False", "Alcohol": "u'none'"}) is None
    assert attributes_summary({"GoodForKids": True, "BusinessParking": "{'garage': False, "
                               "'street': True, 'lot': True}"}) == (
        "good for kids; parking: street, lot")


def test_fast_and_line_by_line_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    import dmesr.data.readers.yelp as yelp

    fast, _ = read(photos=PHOTOS)
    monkeypatch.setattr(yelp, "fast_table", lambda *a: None)
    slow, _ = read(photos=PHOTOS)
    assert fast.interactions.equals(slow.interactions) and fast.items.equals(slow.items)
