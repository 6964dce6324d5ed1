"""Helpers shared by tests (a plain module: `conftest` names collide across folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def write_atomic_files(folder: Path, n_users: int = 40, n_items: int = 60,
                       seed: int = 0) -> tuple[Path, Path]:
    """Synthetic RecBole atomic files with a learnable structure (item i is often followed by i+1)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(1, n_users + 1):
        length = int(rng.integers(8, 20))
        start = int(rng.integers(1, n_items + 1))
        for t in range(length):
            item = (start + t - 1) % n_items + 1 if rng.random() < 0.8 else int(
                rng.integers(1, n_items + 1))
            lines.append(f"u{u}\ti{item}\t{int(rng.integers(1, 6))}\t{1_000_000 + 60 * t}")
    inter = folder / "tiny.inter"
    inter.write_text("\n".join(lines) + "\n")
    item_lines = ["item_id:token\tmovie_title:token_seq\tclass:token_seq"]
    genres = ["Action", "Comedy", "Drama", "Horror", "Romance"]
    item_lines += [f"i{i}\tMovie number {i}\t{genres[i % 5]} {genres[(i * 7) % 5]}"
                   for i in range(1, n_items + 1)]
    item = folder / "tiny.item"
    item.write_text("\n".join(item_lines) + "\n")
    return inter, item


FAKE_VIEWS = ("mllm_img", "mllm_txt", "mllm_mm", "text_title", "text_genres")


def write_fake_store(ds, root: Path, seed: int = 0, dim: int = 12) -> Path:
    """A real feature store (the store's own writer) of random features for a prepared
    dataset: three MLLM views with images missing for every 4th item, two text fields."""
    from dmesr.features.store import item_order_hash, write_view

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = ds.n_items + 1
    base = {"content_hash": ds.content_hash, "item_order_hash": item_order_hash(ds),
            "n_items": n - 1}
    no_image = np.zeros(n, dtype=bool)
    no_image[1::4] = True
    for name in FAKE_VIEWS:
        mask = np.ones(n, dtype=bool)
        mask[0] = False
        if name in ("mllm_img", "mllm_mm"):
            mask &= ~no_image
        feats = rng.normal(size=(n, dim)).astype(np.float32)
        kind = "mllm" if name.startswith("mllm") else "text"
        write_view(root, name, feats, mask, {**base, "kind": kind})
    return root
