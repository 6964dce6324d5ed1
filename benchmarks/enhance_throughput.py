"""Stage A throughput: the `openai` client against a local llama.cpp server, and the text encoder.

Starts `python -m llama_cpp.server` with the packaged Gemma-3 270M on a loopback port,
then times the same N completion requests
  - sent by a bare sequential httpx loop (the server's own rate), and
  - sent by the full `dmesr enhance` client path (prompt rendering, async client with its
    semaphore and retry logic, JSONL cache writes, export) at concurrency 1, 4 and 16.
Client overhead = how much longer the concurrency-1 client takes than the bare loop, in %
of the client's wall time (target < 5 %). The llama.cpp Python server runs one request at a
time, so higher concurrency cannot beat its rate; it shows the client adds no cost there.

Also measures the text encoder (all-MiniLM-L6-v2, 2 threads) on original text fields,
without de-duplication (target >= 300 texts/s).

    python benchmarks/enhance_throughput.py [--data data/ml100k] [--n 32] [--max-tokens 16]

Writes benchmarks/results/enhance_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import httpx

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dmesr.data.dataset import PreparedDataset
from dmesr.enhance.config import EnhanceConfig
from dmesr.enhance.prompts import TemplateSet
from dmesr.enhance.runner import item_infos, run_enhance
from dmesr.enhance.testing import llama_server, make_prepared

RESULTS = Path(__file__).resolve().parent / "results" / "enhance_throughput.json"


def dataset(data: str | None, n: int, tmp: Path) -> PreparedDataset:
    if data and (Path(data) / "manifest.json").exists():
        return PreparedDataset(data)
    return make_prepared(tmp / "synthetic", n_items=n, with_image=[False] * n)


def bare_loop(url: str, prompts: list[str], max_tokens: int) -> float:
    """Seconds for the server to answer the prompts one after another (no client logic)."""
    t0 = time.perf_counter()
    with httpx.Client(timeout=120, trust_env=False) as client:
        for p in prompts:
            r = client.post(f"{url}/completions", json={
                "model": "gemma", "prompt": p, "max_tokens": max_tokens, "temperature": 0.0,
                "stop": ["\n"]})
            r.raise_for_status()
    return time.perf_counter() - t0


def client_run(url: str, ds: PreparedDataset, n: int, concurrency: int, max_tokens: int,
               cache: Path) -> tuple[float, int]:
    cfg = EnhanceConfig.model_validate({
        "backend": "openai", "views": ["txt"], "cache_dir": str(cache),
        "openai": {"base_urls": [url], "model": "gemma", "mode": "completion",
                   "concurrency": concurrency, "max_tokens": max_tokens, "temperature": 0.0,
                   "stop": ["\n"]}})
    t0 = time.perf_counter()
    summary = run_enhance(ds.root, cfg, limit=n, progress=False, log=lambda m: None)
    return time.perf_counter() - t0, summary.sent.get("txt", 0)


def client_cost(ds: PreparedDataset, n: int, tmp: Path) -> dict[str, float]:
    """Milliseconds per item the client itself spends, against an instant fake server.

    An upper bound on the client's overhead (it includes the fake server's own work) that,
    unlike a wall-time difference, is not drowned by the real server's run-to-run noise.
    """
    from dmesr.enhance.testing import RecordingServer

    fake = RecordingServer().start()
    try:
        out = {}
        for c in (1, 16):
            wall, sent = client_run(fake.base_url, ds, n, c, 16, tmp / f"fake{c}")
            out[f"ms_per_item_c{c}"] = round(wall / max(sent, 1) * 1000, 2)
        return out
    finally:
        fake.stop()


def embed_rate(ds: PreparedDataset, threads: int = 2) -> dict[str, float]:
    from dmesr.features.text import TextEncoder
    items = ds.items
    texts = [str(v) for f in ds.text_fields for v in items[f] if v is not None and str(v).strip()]
    enc = TextEncoder(threads=threads)
    enc.encode(texts[:64], dedup=False)  # load + warm up
    t0 = time.perf_counter()
    enc.encode(texts, dedup=False)
    raw = len(texts) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    enc.encode(texts, dedup=True)
    dedup = len(texts) / (time.perf_counter() - t0)
    return {"texts": len(texts), "texts_per_s": round(raw, 1),
            "texts_per_s_with_dedup": round(dedup, 1), "threads": threads,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data/ml100k")
    ap.add_argument("--n", type=int, default=32, help="requests per measurement")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--levels", default="1,4,16")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        ds = dataset(args.data, args.n, tmp)
        tpl = TemplateSet.load("default")
        prompts = [tpl.render("txt", "completion", ds.domain, it.fields).text
                   for it in item_infos(ds, args.n)]
        with llama_server(log=tmp / "server.log") as url:
            bare_loop(url, prompts[:4], args.max_tokens)  # warm-up
            bare = [bare_loop(url, prompts, args.max_tokens)]
            rows = []
            for c in levels:
                wall, sent = client_run(url, ds, args.n, c, args.max_tokens, tmp / f"cache{c}")
                rows.append({"concurrency": c, "requests": sent, "wall_s": round(wall, 3),
                             "items_per_s": round(sent / wall, 3)})
                print(f"client c={c:>2}: {sent} items in {wall:.2f}s = {sent / wall:.2f} items/s")
            bare.append(bare_loop(url, prompts, args.max_tokens))  # the server may drift
        cost = client_cost(ds, len(prompts), tmp)
        bare_s = statistics.mean(bare)
        c1 = next(r for r in rows if r["concurrency"] == min(levels))
        overhead = max(0.0, (c1["wall_s"] - bare_s) / c1["wall_s"] * 100)
        print(f"bare loop: {len(prompts)} items in {bare_s:.2f}s = {len(prompts) / bare_s:.2f} "
              f"items/s (runs: {', '.join(f'{b:.2f}' for b in bare)})")
        print(f"client overhead at concurrency {c1['concurrency']}: {overhead:.2f} % of wall time")
        server_ms = bare_s / len(prompts) * 1000
        cost_pct = cost["ms_per_item_c1"] / (cost["ms_per_item_c1"] + server_ms) * 100
        print(f"client cost against an instant fake server: {cost['ms_per_item_c1']:.1f} ms/item "
              f"(c=1), {cost['ms_per_item_c16']:.1f} ms/item (c=16) = {cost_pct:.2f} % of "
              f"{server_ms:.0f} ms per real request")
        emb = embed_rate(ds)
        print(f"embedding: {emb['texts_per_s']:.0f} texts/s raw, "
              f"{emb['texts_per_s_with_dedup']:.0f} texts/s with de-duplication "
              f"({emb['texts']} original-text field values, {emb['threads']} threads)")
    result = {
        "benchmark": "enhance_throughput",
        "dataset": str(ds.root) if args.data and Path(args.data).exists() else "synthetic",
        "server": "llama_cpp.server, gemma-3-270m-q4_k_m.gguf, n_threads 1 (see LocalConfig.n_threads), "
                  "completion mode, one request at a time",
        "requests": len(prompts), "max_tokens": args.max_tokens,
        "server_items_per_s": round(len(prompts) / bare_s, 3),
        "bare_loop_runs_s": [round(b, 3) for b in bare],
        "client_overhead_pct": round(overhead, 2),
        "client_overhead_definition": "(client wall at concurrency 1 - bare loop wall) / "
                                      "client wall; bare loop = mean of a run before and after",
        "client_cost": {**cost, "pct_of_real_request": round(cost_pct, 2)},
        "rows": rows,
        "embed_texts_per_s": emb["texts_per_s"],
        "embed": emb,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
