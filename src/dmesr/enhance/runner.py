"""Run Stage A: plan what is missing, generate it concurrently, append it to the cache.

The cache is the state. A run renders every prompt (cheap), looks each (item key, prompt
hash) up in the cache and sends only what is missing, or failed and still worth retrying.
Results are appended the moment they arrive, so an interrupted run keeps all finished
work and the next run picks up the rest. At the end the current descriptions are
exported to `descriptions.parquet` (with a JSON sidecar) for `dmesr embed`.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from tqdm.auto import tqdm

from dmesr.data.dataset import PreparedDataset
from dmesr.enhance.backends import Backend, Request, Result, make_backend
from dmesr.enhance.backends.base import internal_error
from dmesr.enhance.cache import CacheContents, CacheWriter, cache_path, read_cache, writers
from dmesr.enhance.config import EnhanceConfig
from dmesr.enhance.prompts import IMAGE_VIEWS, VIEWS, Prompt, TemplateSet, image_sha
from dmesr.errors import ConfigError, DmesrError
from dmesr.io import atomic_path, provenance, read_json, stable_hash, write_json

Log = Callable[[str], None]
DESCRIPTIONS = "descriptions.parquet"
T = TypeVar("T")


@dataclass
class ItemInfo:
    item: int
    key: str
    fields: dict[str, Any]
    image_path: str | None


@dataclass
class ViewPlan:
    view: str
    prompts: dict[int, Prompt] = field(default_factory=dict)  # eligible items only
    not_applicable: int = 0  # items without a usable image (img / mm)
    unsupported: str | None = None  # the backend cannot produce this view at all


def item_infos(ds: PreparedDataset, limit: int | None = None) -> list[ItemInfo]:
    df = ds.items.sort_values("item")
    if limit is not None:
        df = df.head(limit)
    fields = ds.text_fields
    has_status = "image_status" in df.columns
    out = []
    for row in df.itertuples(index=False):
        r = row._asdict()
        ok = r.get("image_path") is not None and (not has_status or r["image_status"] == "ok")
        out.append(ItemInfo(int(r["item"]), str(r["item_key"]), {f: r.get(f) for f in fields},
                            str(r["image_path"]) if ok else None))
    return out


def plan_views(
    ds: PreparedDataset,
    items: list[ItemInfo],
    backend: Backend,
    templates: TemplateSet,
    cfg: EnhanceConfig,
) -> dict[str, ViewPlan]:
    """Prompts of every view (dependencies first: a derived view hashes its inputs')."""
    plans: dict[str, ViewPlan] = {}
    shas: dict[int, str | None] = {}
    for view in ("img", "txt", "mm"):
        plan = ViewPlan(view, unsupported=backend.supports(view))
        plans[view] = plan
        if plan.unsupported:
            continue
        try:
            _plan_items(plan, plans, items, shas, backend, templates, ds.domain, cfg)
        except ConfigError as exc:  # e.g. a custom template set without this view
            plan.prompts.clear()
            plan.not_applicable = 0
            plan.unsupported = str(exc)
    return plans


def _plan_items(
    plan: ViewPlan,
    plans: dict[str, ViewPlan],
    items: list[ItemInfo],
    shas: dict[int, str | None],
    backend: Backend,
    templates: TemplateSet,
    domain: str,
    cfg: EnhanceConfig,
) -> None:
    view = plan.view
    for it in items:
        if view in IMAGE_VIEWS:
            if it.item not in shas:
                shas[it.item] = image_sha(it.image_path)
            if shas[it.item] is None:  # no image, or the file vanished since `prepare`
                plan.not_applicable += 1
                continue
        deps = {d: plans[d].prompts[it.item].prompt_hash
                for d in backend.depends_on(view) if it.item in plans[d].prompts}
        plan.prompts[it.item] = backend.make_prompt(
            templates, view, domain, it.fields, it.image_path, shas.get(it.item), deps,
            cfg.max_field_chars)


def item_status(rec: dict[str, Any] | None) -> str:
    if rec is None:
        return "missing"
    return "done" if rec["status"] == "ok" else "failed"


def wants_retry(rec: dict[str, Any], cfg: EnhanceConfig, retry_failed: bool) -> bool:
    if retry_failed:
        return True
    return not rec.get("final", False) and int(rec.get("failures", 1)) < cfg.max_failures


@dataclass
class RunSummary:
    sent: dict[str, int] = field(default_factory=dict)
    ok: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def did_work(self) -> bool:
        return any(self.sent.values())


def run_enhance(
    data_dir: str | Path,
    cfg: EnhanceConfig,
    views: list[str] | None = None,
    limit: int | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    log: Log = print,
    backend: Backend | None = None,
) -> RunSummary:
    t0 = time.perf_counter()
    ds = PreparedDataset(data_dir)
    backend = backend or make_backend(cfg)
    templates = TemplateSet.load(cfg.templates)
    root = cfg.cache_root(data_dir)
    views = list(views or cfg.views)
    items = item_infos(ds)  # plan and export everything; --limit only bounds what is sent
    plans = plan_views(ds, items, backend, templates, cfg)
    contents = {v: read_cache(cache_path(root, v)) for v in VIEWS}
    allowed = {it.item for it in items[:limit]} if limit is not None else None
    summary = RunSummary()

    async def run_all() -> None:
        try:
            for view in VIEWS:  # fixed order: derived views after their inputs
                if view in views:
                    await _run_view(view, plans, contents, ws[view], backend, items, cfg,
                                    retry_failed, progress, log, summary, allowed)
        finally:
            await backend.aclose()

    # one event loop for all views: connection pools and semaphores belong to one loop
    with writers(root, views, fsync_every=cfg.fsync_every,
                 fsync_interval_s=cfg.fsync_interval_s) as ws:
        run_stoppable(run_all())
    export_descriptions(root, ds, plans, contents, backend, templates, items, log)
    summary.seconds = time.perf_counter() - t0
    if not summary.did_work:
        log("enhance: nothing to do, every requested item is cached "
            f"({root}); `dmesr enhance --report` shows coverage")
    return summary


def run_stoppable(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, where SIGTERM cancels the main task (as asyncio does for Ctrl-C).

    `dmesr.cli` turns SIGTERM into an exception raised wherever the main thread is; inside
    the event loop that is often a weakref callback of a dying asyncio/httpx object, where
    Python drops the exception: the `kill` was lost and the run went on, or waited on held
    requests (a CI hang; benchmarks/sigterm_stress.py). Cancelling the task unwinds at an
    await instead, every `finally` runs (answers flushed, clients closed), and the signal
    is then raised again so whoever handled it before (the CLI's exit 143, or the default:
    terminate) still does.
    """
    terminated = False

    async def guarded() -> T:
        nonlocal terminated
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm() -> None:
            nonlocal terminated
            terminated = True
            if task is not None:
                task.cancel()

        try:
            loop.add_signal_handler(signal.SIGTERM, on_sigterm)
            handled = True
        except (NotImplementedError, RuntimeError, ValueError):  # Windows, not the main thread
            handled = False
        try:
            return await main
        finally:
            if handled:
                loop.remove_signal_handler(signal.SIGTERM)  # resets to SIG_DFL: put it back
                if previous is not None:  # None: a handler not set from Python; keep SIG_DFL
                    signal.signal(signal.SIGTERM, previous)

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        if terminated:
            signal.raise_signal(signal.SIGTERM)
        raise


async def _run_view(
    view: str,
    plans: dict[str, ViewPlan],
    contents: dict[str, CacheContents],
    writer: CacheWriter,
    backend: Backend,
    items: list[ItemInfo],
    cfg: EnhanceConfig,
    retry_failed: bool,
    progress: bool,
    log: Log,
    summary: RunSummary,
    allowed: set[int] | None = None,
) -> None:
    plan = plans[view]
    if plan.unsupported:
        log(f"enhance {view}: skipped, {plan.unsupported}")
        return
    requests, blocked = _requests(view, plans, contents, backend, items, cfg, retry_failed)
    if allowed is not None:
        requests = [r for r in requests if r.item in allowed]
    if blocked:
        log(f"enhance {view}: {blocked} item(s) wait for {'/'.join(backend.depends_on(view))}")
    if not plan.prompts and plan.not_applicable:
        log(f"enhance {view}: no item has a usable image; view missing (masked downstream)")
        return
    if not requests:
        log(f"enhance {view}: nothing to do")
        return
    counts = Counter[str]()
    bar = tqdm(total=len(requests), desc=f"enhance {view}", unit="item", disable=not progress,
               dynamic_ncols=True, mininterval=0.5)

    def on_result(req: Request, res: Result) -> None:
        prev = contents[view].get(req.item_key, req.prompt.prompt_hash)
        rec = _record(req, res, backend, prev)
        writer.append(rec)
        contents[view].records[(req.item_key, req.prompt.prompt_hash)] = rec
        counts["ok" if res.ok else "failed"] += 1
        bar.update(1)
        bar.set_postfix(failed=counts["failed"], refresh=False)

    try:
        await _drive(backend, requests, on_result)
    finally:
        bar.close()
        summary.sent[view] = counts.total()
        summary.ok[view] = counts["ok"]
        summary.failed[view] = counts["failed"]
    log(f"enhance {view}: {counts['ok']} generated, {counts['failed']} failed")


def _requests(
    view: str,
    plans: dict[str, ViewPlan],
    contents: dict[str, CacheContents],
    backend: Backend,
    items: list[ItemInfo],
    cfg: EnhanceConfig,
    retry_failed: bool,
) -> tuple[list[Request], int]:
    by_id = {it.item: it for it in items}
    out, blocked = [], 0
    for item, prompt in plans[view].prompts.items():
        key = by_id[item].key
        rec = contents[view].get(key, prompt.prompt_hash)
        if rec is not None and (rec["status"] == "ok" or not wants_retry(rec, cfg, retry_failed)):
            continue
        context = {}
        for dep in backend.depends_on(view):
            dp = plans[dep].prompts.get(item)
            drec = contents[dep].get(key, dp.prompt_hash) if dp else None
            if drec is None or drec["status"] != "ok":
                break
            context[dep] = drec["text"]
        else:
            out.append(Request(item, key, prompt, context))
            continue
        blocked += 1
    return out, blocked


async def _drive(
    backend: Backend, requests: list[Request], on_result: Callable[[Request, Result], None]
) -> None:
    """Keep `backend.concurrency` batches of up to `backend.batch_size` requests in flight
    (in request order, so a batch's members do not depend on timing); hand each result
    over as its batch lands."""
    queue: asyncio.Queue[Request] = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)

    async def worker() -> None:
        while not queue.empty():
            reqs = [queue.get_nowait() for _ in range(min(backend.batch_size, queue.qsize()))]
            try:
                results = await backend.generate_batch(reqs)
            except DmesrError:
                raise  # a setup problem (missing model, bad key): stop, don't mark items
            except Exception as exc:  # one bad batch must not end a long run
                results = [internal_error(exc) for _ in reqs]
            for req, res in zip(reqs, results, strict=True):
                on_result(req, res)

    n = max(1, min(backend.concurrency, math.ceil(len(requests) / backend.batch_size)))
    await asyncio.gather(*(worker() for _ in range(n)))


def _record(req: Request, res: Result, backend: Backend, prev: dict[str, Any] | None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "key": req.item_key, "item": req.item, "view": req.prompt.view,
        "prompt_hash": req.prompt.prompt_hash, "template": req.prompt.template,
        "model": backend.tag, "status": "ok" if res.ok else "failed",
        "text": res.text if res.ok else None,
        "attempts": res.attempts, "latency_s": round(res.latency_s, 4),
        "endpoint": res.endpoint, "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if not res.ok:
        rec.update(error=res.error, raw=res.raw, final=res.final,
                   failures=int(prev.get("failures", 1)) + 1 if prev and prev["status"] != "ok" else 1)
    if res.extra:
        rec["extra"] = res.extra
    return rec


# ------------------------------------------------------------------------ export / report

def export_descriptions(
    root: Path,
    ds: PreparedDataset,
    plans: dict[str, ViewPlan],
    contents: dict[str, CacheContents],
    backend: Backend,
    templates: TemplateSet,
    items: list[ItemInfo],
    log: Log = print,
) -> Path:
    """Write the current descriptions (one row per done (item, view)) for `dmesr embed`."""
    from dmesr.features.store import item_order_hash

    keys = {it.item: it.key for it in items}
    rows = []
    for view, plan in plans.items():
        for item, prompt in plan.prompts.items():
            rec = contents[view].get(keys[item], prompt.prompt_hash)
            if rec is not None and rec["status"] == "ok":
                rows.append({"item": item, "item_key": keys[item], "view": view,
                             "text": rec["text"], "prompt_hash": prompt.prompt_hash,
                             "template": prompt.template})
    df = pd.DataFrame(rows, columns=["item", "item_key", "view", "text", "prompt_hash", "template"])
    rows_hash = stable_hash(df.to_dict("list"))
    meta_path = root / "descriptions.json"
    if (root / DESCRIPTIONS).exists() and meta_path.exists() and read_json(meta_path).get(
            "rows_hash") == rows_hash and read_json(meta_path).get("content_hash") == ds.content_hash:
        return root / DESCRIPTIONS  # unchanged: a rerun with nothing to do writes nothing
    with atomic_path(root / DESCRIPTIONS) as tmp:
        df.to_parquet(tmp, index=False)
    write_json(meta_path, provenance(
        what="MLLM item descriptions (Stage A)",
        content_hash=ds.content_hash,
        item_order_hash=item_order_hash(ds),
        n_items=ds.n_items,
        backend=backend.describe(),
        templates={v: {"tag": templates.tag, "fingerprint": _fingerprint(backend, templates, v)}
                   for v, p in plans.items() if not p.unsupported},
        counts={v: int((df["view"] == v).sum()) for v in plans},
        rows_hash=rows_hash,
    ))
    log(f"enhance: exported {len(df)} descriptions to {root / DESCRIPTIONS}")
    return root / DESCRIPTIONS


def _fingerprint(backend: Backend, templates: TemplateSet, view: str) -> str:
    """What stands for 'the prompt' of a view as a whole (items' hashes are per row)."""
    from dmesr.enhance.backends.local import IMG_RULE, MM_RULE, LocalBackend

    if isinstance(backend, LocalBackend) and view != "txt":
        return stable_hash([IMG_RULE if view == "img" else MM_RULE,
                            templates.fingerprint("txt", backend.mode)])[:16]
    return templates.fingerprint(view, backend.mode)


def coverage(
    data_dir: str | Path, cfg: EnhanceConfig, backend: Backend | None = None
) -> dict[str, Any]:
    """done / failed / missing per view for the current prompts, with error samples."""
    ds = PreparedDataset(data_dir)
    backend = backend or make_backend(cfg)
    templates = TemplateSet.load(cfg.templates)
    root = cfg.cache_root(data_dir)
    items = item_infos(ds)
    plans = plan_views(ds, items, backend, templates, cfg)
    keys = {it.item: it.key for it in items}
    report: dict[str, Any] = {"data": str(data_dir), "model": backend.tag, "cache": str(root),
                              "items": ds.n_items, "views": {}}
    for view in VIEWS:
        contents = read_cache(cache_path(root, view))
        report["views"][view] = _view_coverage(plans[view], contents, keys, cfg.error_samples)
    return report


def _view_coverage(
    plan: ViewPlan, contents: CacheContents, keys: dict[int, str], n_samples: int
) -> dict[str, Any]:
    if plan.unsupported:
        return {"unsupported": plan.unsupported}
    status = Counter[str]()
    errors: dict[str, list[str]] = {}
    for item, prompt in plan.prompts.items():
        rec = contents.get(keys[item], prompt.prompt_hash)
        status[item_status(rec)] += 1
        if rec is not None and rec["status"] != "ok":
            errors.setdefault(str(rec.get("error")), []).append(keys[item])
    top = sorted(errors.items(), key=lambda kv: -len(kv[1]))[:n_samples]
    return {
        "eligible": len(plan.prompts), "done": status["done"], "failed": status["failed"],
        "missing": status["missing"], "not_applicable": plan.not_applicable,
        "cache_lines": contents.lines, "torn_tail": contents.torn_tail,
        "bad_lines": contents.bad_lines,
        "errors": [{"error": e, "count": len(ks), "items": ks[:3]} for e, ks in top],
    }


def format_coverage(report: dict[str, Any]) -> str:
    lines = [f"coverage of {report['model']} on {report['data']} ({report['items']} items)",
             f"{'view':<5} {'eligible':>8} {'done':>7} {'failed':>7} {'missing':>7} {'n/a':>6}"]
    for view, c in report["views"].items():
        if "unsupported" in c:
            lines.append(f"{view:<5} unsupported: {c['unsupported']}")
            continue
        lines.append(f"{view:<5} {c['eligible']:>8} {c['done']:>7} {c['failed']:>7} "
                     f"{c['missing']:>7} {c['not_applicable']:>6}")
        for e in c["errors"]:
            lines.append(f"      {e['count']:>5} x {e['error'][:90]}  (e.g. {', '.join(e['items'])})")
    return "\n".join(lines)
