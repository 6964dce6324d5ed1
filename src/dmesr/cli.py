"""The `dmesr` command line: a thin shell over the Python API.

Each sub-command lives next to the code it drives (module:attribute below) and is
imported only when invoked, so `dmesr --help` stays fast.
"""

from __future__ import annotations

import _thread
import importlib
import signal
import sys

import click

from dmesr import __version__
from dmesr.errors import DmesrError

# command name -> "module:click_command"
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("dmesr.data.commands:prepare", "Read a raw dataset and prepare it (SPEC §2)."),
    "enhance": ("dmesr.enhance.commands:enhance", "Generate MLLM item descriptions (Stage A)."),
    "embed": ("dmesr.features.commands:embed", "Encode descriptions, texts and images (Stage A)."),
    "train": ("dmesr.train.commands:train", "Train SASRec/BERT4Rec/GRU4Rec/pop (resumable)."),
    "evaluate": ("dmesr.eval.commands:evaluate", "Evaluate runs; seeds mean ± std; significance."),
    "experiment": ("dmesr.experiment.commands:experiment",
                   "Run a grid of backbone × variant × seed cells, then report."),
    "report": ("dmesr.report.commands:report", "Tables, p-values and plots of an experiment."),
    "pipeline": ("dmesr.pipeline:pipeline",
                 "The whole job: prepare, enhance, embed, train, evaluate, table."),
    "recommend": ("dmesr.serve.commands:recommend",
                  "Top-K items for users or histories from a trained run."),
    "serve": ("dmesr.serve.commands:serve", "Serve top-K recommendations over HTTP (JSON)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, _, attr = COMMANDS[name][0].partition(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="dmesr")
def cli() -> None:
    """dmesr: multimodal sequential recommendation enhanced by multimodal LLMs."""


INTERRUPTED = ("interrupted: finished work is kept (caches, checkpoints, finished cells); "
               "rerun the same command to continue")


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a scheduler, a job's time limit), raised like Ctrl-C so that
    `finally` blocks run: caches are flushed and temporary files removed."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(f"signal {signum}")


def _redeliver_interrupts(hook: sys.UnraisableHookArgs) -> None:
    """Python drops exceptions raised in weakref callbacks and `__del__`; a signal handled
    there would be lost and the process keep running (seen in CI: `kill` on a busy
    `dmesr enhance`). Deliver such a Ctrl-C / SIGTERM again instead."""
    if isinstance(hook.exc_value, KeyboardInterrupt):
        _thread.interrupt_main(signal.SIGTERM if isinstance(hook.exc_value, Terminated)
                               else signal.SIGINT)
    else:
        sys.__unraisablehook__(hook)


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _terminate)
    sys.unraisablehook = _redeliver_interrupts
    try:
        cli.main(args=argv, prog_name="dmesr", standalone_mode=False)
    except click.exceptions.Abort as exc:  # click turns KeyboardInterrupt into Abort
        click.echo(INTERRUPTED, err=True)
        sys.exit(128 + signal.SIGTERM if isinstance(exc.__cause__, Terminated) else 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except DmesrError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
