"""Greedy decoding of several prompts at once in one llama.cpp context.

On a CPU, generating one token of a small model is bound by reading its weights (the
270M Gemma's 262k-token output matrix alone is most of them). Decoding `n` sequences in
one batch reads the weights once per step for all of them: on one core, 64 ML-100K
prompts in batches of 8 ran 1.9x the items/s of one at a time (`benchmarks/enhance_batch.py`).

The sampling matches llama-cpp-python's `create_completion` at temperature 0: a repeat
penalty over the last 64 generated tokens, then argmax; stop at an end-of-generation
token, at a stop string (cut before it) or at `max_tokens`. With one sequence the answers
are identical to `create_completion` (tested). With several, the matrix kernels differ
from the one-row case and greedy decoding can drift after a near-tie (36 of those 64
answers equal batch 1's); for the same prompts, order and batch size they are reproducible.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from dmesr.errors import DmesrError

PENALTY_LAST_N = 64  # llama-cpp-python's default `last_n_tokens_size`


@dataclass
class Completion:
    text: str
    tokens: int
    finish: str  # "stop" or "length"


class _Sequence:
    def __init__(self, slot: int, prompt: list[int]) -> None:
        self.slot = slot
        self.prompt = prompt
        self.generated: list[int] = []
        self.done: Completion | None = None

    @property
    def pos(self) -> int:
        return len(self.prompt) + len(self.generated)


def model_handle(llm: Any) -> Any:
    """The C model pointer inside a loaded `Llama`. llama-cpp-python has no public accessor,
    so this reads `llm._model.model` (checked with 0.3.36, the pinned version) and says so
    when another version moved it, rather than failing with an AttributeError."""
    handle = getattr(getattr(llm, "_model", None), "model", None)
    if handle is None:
        import llama_cpp

        raise DmesrError(
            f"batched decoding needs Llama._model.model, which llama-cpp-python "
            f"{getattr(llama_cpp, '__version__', '?')} does not have (0.3.36 does); "
            "set enhance.local.batch: 1 to decode one prompt at a time")
    return handle


class BatchDecoder:
    """One llama.cpp context with `n_seq` sequences of `seq_ctx` tokens each, next to a
    loaded `Llama` (its model, tokenizer and detokenizer are shared)."""

    def __init__(self, llm: Any, n_seq: int, seq_ctx: int, n_threads: int, n_batch: int) -> None:
        import llama_cpp as lc

        self._lc = lc
        self.llm = llm
        self.n_seq = n_seq
        self.seq_ctx = seq_ctx
        self.n_batch = n_batch
        # the loaded model's own context settings (attention kernel, KV types...), so that
        # one sequence decodes exactly as `create_completion` does
        params = type(llm.context_params).from_buffer_copy(llm.context_params)
        params.n_ctx = n_seq * seq_ctx
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = n_threads
        model = model_handle(llm)
        self._ctx = lc.llama_init_from_model(model, params)
        if not self._ctx:
            raise RuntimeError("llama.cpp could not create a batched context")
        self._batch = lc.llama_batch_init(max(n_batch, n_seq), 0, 1)
        vocab = lc.llama_model_get_vocab(model)
        self._n_vocab = lc.llama_vocab_n_tokens(vocab)
        self._is_eog = lambda tok: bool(lc.llama_vocab_is_eog(vocab, tok))
        # held while a batch decodes: on Ctrl-C / SIGTERM the runner closes its backend
        # while worker threads may still be inside llama_decode, and freeing the context
        # under them segfaults; close() waits for the batch instead (seconds at most)
        self._busy = threading.Lock()

    def close(self) -> None:
        with self._busy:
            if self._ctx:
                self._lc.llama_batch_free(self._batch)
                self._lc.llama_free(self._ctx)
                self._ctx = None

    def tokenize(self, prompt: str) -> list[int]:
        return self.llm.tokenize(prompt.encode())  # BOS first, as `create_completion` does

    def fits(self, prompt: list[int], max_tokens: int) -> bool:
        return len(prompt) + max_tokens <= self.seq_ctx

    def complete(
        self, prompts: list[list[int]], max_tokens: int, repeat_penalty: float, stop: list[str]
    ) -> list[Completion]:
        """Answers for up to `n_seq` tokenized prompts, each from a fresh state."""
        if len(prompts) > self.n_seq:
            raise ValueError(f"{len(prompts)} prompts for a context of {self.n_seq} sequences")
        with self._busy:
            if not self._ctx:
                raise RuntimeError("the batched context is closed")
            return self._complete(prompts, max_tokens, repeat_penalty, stop)

    def _complete(
        self, prompts: list[list[int]], max_tokens: int, repeat_penalty: float, stop: list[str]
    ) -> list[Completion]:
        self._lc.llama_memory_clear(self._lc.llama_get_memory(self._ctx), True)
        seqs = [_Sequence(i, tokens) for i, tokens in enumerate(prompts)]
        logits = self._prefill(seqs)
        active = list(seqs)
        while active:
            for seq, row in zip(active, logits, strict=True):
                self._step(seq, row, max_tokens, repeat_penalty, stop)
            active = [s for s in active if s.done is None]
            if active:
                logits = self._decode([(s.generated[-1], s.pos - 1, s.slot, True) for s in active])
        return [s.done for s in seqs]  # type: ignore[misc]

    def _prefill(self, seqs: list[_Sequence]) -> list[np.ndarray]:
        """Every prompt in chunks of `n_batch` tokens; the last position's logits of each."""
        entries = [(tok, pos, s.slot, pos == len(s.prompt) - 1)
                   for s in seqs for pos, tok in enumerate(s.prompt)]
        out: list[np.ndarray] = []
        for start in range(0, len(entries), self.n_batch):
            out += self._decode(entries[start:start + self.n_batch])
        return out

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> list[np.ndarray]:
        """Evaluate (token, position, sequence, wants logits) entries; copies of the logits
        asked for, in order (the next decode overwrites them)."""
        b = self._batch
        for i, (tok, pos, slot, want) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, want
            b.seq_id[i][0] = slot
        b.n_tokens = len(entries)
        rc = self._lc.llama_decode(self._ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc})")
        return [np.ctypeslib.as_array(self._lc.llama_get_logits_ith(self._ctx, i),
                                      shape=(self._n_vocab,)).copy()
                for i, e in enumerate(entries) if e[3]]

    def _step(self, seq: _Sequence, logits: np.ndarray, max_tokens: int,
              repeat_penalty: float, stop: list[str]) -> None:
        recent = np.unique(np.asarray(seq.generated[-PENALTY_LAST_N:], dtype=np.int64))
        if recent.size and repeat_penalty != 1.0:
            vals = logits[recent]
            logits[recent] = np.where(vals > 0, vals / repeat_penalty, vals * repeat_penalty)
        tok = int(np.argmax(logits))
        if self._is_eog(tok):
            seq.done = Completion(self._text(seq), len(seq.generated), "stop")
            return
        seq.generated.append(tok)
        text = self._text(seq)
        cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
        if cut >= 0:
            seq.done = Completion(text[:cut], len(seq.generated), "stop")
        elif len(seq.generated) >= max_tokens:
            seq.done = Completion(text, len(seq.generated), "length")

    def _text(self, seq: _Sequence) -> str:
        raw = self.llm.detokenize(seq.generated, prev_tokens=seq.prompt)
        return raw.decode("utf-8", errors="ignore")

