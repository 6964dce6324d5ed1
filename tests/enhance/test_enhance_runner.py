"""Stage A end to end against recording servers: views, masking, resume, report, CLI."""

from __future__ import annotations

import json

import pandas as pd
from click.testing import CliRunner

from dmesr.cli import cli
from dmesr.enhance.cache import read_cache
from dmesr.enhance.config import EnhanceConfig
from dmesr.enhance.runner import DESCRIPTIONS, coverage, format_coverage, run_enhance
from dmesr.enhance.testing import answer_with


def cfg_for(urls, tmp_path, **kw) -> EnhanceConfig:
    return EnhanceConfig.model_validate({
        "backend": "openai", "cache_dir": str(tmp_path / "cache"),
        "openai": {"base_urls": urls, "model": "vlm", "concurrency": 4,
                   "backoff_base_s": 0.01, **kw}})


def test_three_views_images_masked_and_second_run_does_nothing(fake_data, servers, tmp_path):
    s = servers()
    cfg = cfg_for([s.base_url], tmp_path)
    logs: list[str] = []
    summary = run_enhance(fake_data.root, cfg, progress=False, log=logs.append)
    # 6 items: txt for all, img and mm only for the 3 with an image
    assert summary.sent == {"img": 3, "txt": 6, "mm": 3} and sum(summary.failed.values()) == 0
    assert len(s.requests) == 12
    mm_parts = [r.body["messages"][1]["content"] for r in s.requests
                if "integrated description" in json.dumps(r.body)]
    assert len(mm_parts) == 3 and all(p[0]["type"] == "image_url" for p in mm_parts)
    root = cfg.cache_root(fake_data.root)
    desc = pd.read_parquet(root / DESCRIPTIONS)
    assert sorted(desc[desc.view == "img"].item) == [1, 3, 5]
    meta = json.loads((root / "descriptions.json").read_text())
    assert meta["content_hash"] == fake_data.content_hash and meta["counts"]["txt"] == 6

    logs.clear()
    again = run_enhance(fake_data.root, cfg, progress=False, log=logs.append)
    assert not again.did_work and len(s.requests) == 12
    assert any("nothing to do" in m for m in logs)


def test_failures_are_recorded_not_stored_and_retried_on_rerun(fake_data, servers, tmp_path):
    s = servers(respond=answer_with(""))
    cfg = cfg_for([s.base_url], tmp_path, temperature=0.5)
    first = run_enhance(fake_data.root, cfg, views=["txt"], progress=False, log=lambda m: None)
    assert first.failed == {"txt": 6}
    root = cfg.cache_root(fake_data.root)
    assert pd.read_parquet(root / DESCRIPTIONS).empty
    rep = coverage(fake_data.root, cfg)["views"]["txt"]
    assert (rep["done"], rep["failed"], rep["missing"]) == (0, 6, 0)
    assert rep["errors"][0]["error"] == "degenerate: empty answer" and rep["errors"][0]["count"] == 6

    s.respond = None  # the endpoint recovers: a rerun does only the failed items
    second = run_enhance(fake_data.root, cfg, views=["txt"], progress=False, log=lambda m: None)
    assert second.ok == {"txt": 6}
    assert len(pd.read_parquet(root / DESCRIPTIONS)) == 6


def test_final_failures_and_max_failures_stop_retries(fake_data, servers, tmp_path):
    s = servers(respond=answer_with(""))
    cfg = cfg_for([s.base_url], tmp_path, temperature=0.0)  # greedy: empty would repeat
    run_enhance(fake_data.root, cfg, views=["txt"], progress=False, log=lambda m: None)
    again = run_enhance(fake_data.root, cfg, views=["txt"], progress=False, log=lambda m: None)
    assert not again.did_work
    forced = run_enhance(fake_data.root, cfg, views=["txt"], retry_failed=True, progress=False,
                         log=lambda m: None)
    assert forced.failed == {"txt": 6}
    recs = read_cache(cfg.cache_root(fake_data.root) / "txt.jsonl").records.values()
    assert {r["failures"] for r in recs} == {2}


def test_template_change_regenerates_and_never_mixes(fake_data, servers, tmp_path):
    s = servers()
    cfg = cfg_for([s.base_url], tmp_path)
    run_enhance(fake_data.root, cfg, views=["txt"], progress=False, log=lambda m: None)
    tpl = tmp_path / "mine.yaml"
    tpl.write_text("id: mine\nversion: 1\nviews:\n  txt:\n    chat: 'Summarise this {domain}: {fields}'\n")
    cfg2 = cfg.model_copy(update={"templates": str(tpl)})
    second = run_enhance(fake_data.root, cfg2, views=["txt"], progress=False, log=lambda m: None)
    assert second.sent["txt"] == 6
    desc = pd.read_parquet(cfg.cache_root(fake_data.root) / DESCRIPTIONS)
    assert set(desc.template) == {"mine@1"} and len(desc) == 6


def test_cli_enhance_and_report(fake_data, servers, tmp_path):
    s = servers()
    conf = tmp_path / "stage_a.yaml"
    conf.write_text(f"enhance:\n  backend: openai\n  openai:\n    base_urls: ['{s.base_url}']\n")
    r = CliRunner().invoke(cli, ["enhance", "--data", str(fake_data.root), "--config", str(conf),
                                 "--views", "txt", "--no-progress", "enhance.openai.model=m2"])
    assert r.exit_code == 0, r.output
    assert s.requests[0].body["model"] == "m2"
    r = CliRunner().invoke(cli, ["enhance", "--data", str(fake_data.root), "--config", str(conf),
                                 "--report", "enhance.openai.model=m2"])
    assert r.exit_code == 0
    assert "txt" in r.output and "6       0       0" in r.output
    r = CliRunner().invoke(cli, ["enhance", "--data", str(fake_data.root), "--config", str(conf),
                                 "--report", "--json", "enhance.openai.model=m2"])
    assert json.loads(r.output)["views"]["img"]["missing"] == 3


def test_format_coverage_lists_error_samples():
    rep = {"model": "m", "data": "d", "items": 2, "views": {
        "txt": {"eligible": 2, "done": 1, "failed": 1, "missing": 0, "not_applicable": 0,
                "errors": [{"error": "HTTP 500", "count": 1, "items": ["k2"]}]},
        "img": {"unsupported": "no images"}}}
    text = format_coverage(rep)
    assert "HTTP 500" in text and "k2" in text and "unsupported" in text


def test_limit_bounds_requests_but_export_keeps_everything(fake_data, servers, tmp_path):
    s = servers()
    cfg = cfg_for([s.base_url], tmp_path)
    run_enhance(fake_data.root, cfg, views=["txt"], progress=False, log=lambda m: None)
    again = run_enhance(fake_data.root, cfg, views=["txt"], limit=2, progress=False,
                              log=lambda m: None)
    assert not again.did_work
    desc = pd.read_parquet(cfg.cache_root(fake_data.root) / DESCRIPTIONS)
    assert len(desc) == 6
    fresh = cfg.model_copy(update={"cache_dir": str(tmp_path / "other")})
    first = run_enhance(fake_data.root, fresh, views=["txt"], limit=2, progress=False,
                        log=lambda m: None)
    assert first.sent == {"txt": 2}


def test_an_image_file_gone_since_prepare_is_masked_not_fatal(fake_data, servers, tmp_path):
    (fake_data.root / "images" / "3.jpg").unlink()
    s = servers()
    cfg = cfg_for([s.base_url], tmp_path)
    summary = run_enhance(fake_data.root, cfg, progress=False, log=lambda m: None)
    assert summary.sent == {"img": 2, "txt": 6, "mm": 2}
    assert coverage(fake_data.root, cfg)["views"]["img"]["not_applicable"] == 4
