"""`dmesr recommend` (top-K lists to a file or the terminal) and `dmesr serve` (the same
over HTTP with JSON)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dmesr.errors import DmesrError
from dmesr.io import atomic_path, provenance, write_json

if TYPE_CHECKING:  # pandas is imported where the commands run: `--help` stays fast
    import pandas as pd


def read_user_keys(path: Path) -> list[str]:
    """One user key per line (blank lines and `#` comments skipped)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DmesrError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


TERMINAL_ROWS = 200  # rows printed to a terminal before the rest is left to --out


def echo_table(frame: pd.DataFrame, to_terminal: bool | None = None) -> None:
    """Every row when stdout is piped or redirected; on a terminal the first TERMINAL_ROWS
    and a line on stderr saying how many more there are (--all-users makes thousands)."""
    if to_terminal is None:
        to_terminal = sys.stdout.isatty()
    shown = frame.head(TERMINAL_ROWS) if to_terminal else frame
    click.echo(shown.to_string(index=False))
    if len(shown) < len(frame):
        click.echo(f"... {len(frame) - len(shown):,} more rows not shown: --out FILE "
                   "(.parquet or .csv) writes them all, as does piping the output", err=True)


def write_table(frame: pd.DataFrame, out: Path, meta: dict) -> None:
    """`out` as Parquet or CSV (by suffix), written atomically, plus `<out stem>.json`."""
    if out.suffix not in (".parquet", ".csv"):
        raise DmesrError(f"--out {out}: use a .parquet or .csv file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        if out.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
    write_json(out.with_suffix(".json"), meta)


@click.command()
@click.option("--run", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="run directory written by `dmesr train`")
@click.option("--user", "users", multiple=True, help="user key (source id; repeatable)")
@click.option("--users-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="file with one user key per line")
@click.option("--all-users", is_flag=True, help="every user of the run's dataset")
@click.option("--history", "histories", multiple=True,
              help="comma-separated item keys, oldest first, for a user the data does not "
                   "know (repeatable)")
@click.option("-k", "--k", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--include-seen", is_flag=True, help="keep items the history already holds")
@click.option("--skip-unknown", is_flag=True,
              help="leave out history items that are not in the catalogue instead of stopping")
@click.option("--as-of", default="all", show_default=True,
              type=click.Choice(["all", "valid", "test"]),
              help="known users: after their whole history (all), or as evaluated, before "
                   "the held-out item, with columns target_item_key and hit")
@click.option("--checkpoint", default="best", show_default=True,
              type=click.Choice(["best", "last"]))
@click.option("--out", type=click.Path(path_type=Path),
              help="write the lists to this .parquet or .csv (+ a .json with their provenance) "
                   "instead of printing them")
def recommend(run: Path, users: tuple[str, ...], users_file: Path | None, all_users: bool,
              histories: tuple[str, ...], k: int, include_seen: bool, skip_unknown: bool,
              as_of: str, checkpoint: str, out: Path | None) -> None:
    """Top-K items for known users (after their whole history) or for given histories."""
    import pandas as pd

    from dmesr.serve.recommender import Recommender

    keys = list(users) + (read_user_keys(users_file) if users_file else [])
    if not (keys or all_users or histories):
        raise click.UsageError("say for whom: --user, --users-file, --all-users or --history")
    rec = Recommender.from_run(run, checkpoint)
    if all_users:
        keys = list(rec.user_keys)
    exclude = not include_seen
    frames = []
    if keys:
        top = rec.for_users(keys, k, exclude, as_of)  # type: ignore[arg-type]
        frames.append(rec.table(top, keys, "user_key"))
        if top.targets is not None:
            hits = (top.items == top.targets[:, None]).any(axis=1)
            click.echo(f"as of {as_of}: the held-out item is in the top {k} for "
                       f"{hits.sum():,} of {len(keys):,} users (HR@{k} {hits.mean():.4f})",
                       err=True)
    if histories:
        ids = [rec.item_ids([x.strip() for x in h.split(",") if x.strip()],
                            "skip" if skip_unknown else "error", f"--history {i + 1}")
               for i, h in enumerate(histories)]
        names = [f"history {i + 1}" for i in range(len(histories))]
        frames.append(rec.table(rec.for_histories(ids, k, exclude), names, "user_key"))
    table = pd.concat(frames, ignore_index=True)
    if out is None:
        echo_table(table)
        return
    write_table(table, out, provenance(
        what="top-K recommendations", **rec.describe(), k=k, exclude_seen=exclude, as_of=as_of,
        users_asked=len(keys), histories_asked=len(histories), rows=len(table)))
    click.echo(f"wrote {len(table):,} rows for {len(keys) + len(histories):,} users to {out}")


@click.command()
@click.option("--run", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="run directory written by `dmesr train`")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="0 picks a free port (printed)")
@click.option("--checkpoint", default="best", show_default=True,
              type=click.Choice(["best", "last"]))
def serve(run: Path, host: str, port: int, checkpoint: str) -> None:
    """Serve top-K recommendations over HTTP (GET /health, POST /recommend)."""
    from dmesr.serve.http import make_server
    from dmesr.serve.recommender import Recommender

    server = make_server(Recommender.from_run(run, checkpoint), host, port)
    bound_host, bound_port = server.server_address[:2]
    click.echo(f"serving {run} on http://{bound_host}:{bound_port} "
               "(POST /recommend, GET /health); Ctrl-C stops", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: a normal way to stop a server
        click.echo("stopped", err=True)
    finally:
        server.server_close()
