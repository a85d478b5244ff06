"""The ``ldmctl`` command line: sub-commands assembled here, and the one error boundary."""

from __future__ import annotations

import logging
import os

import typer
from rich.markup import escape

from ldmctl import __version__
from ldmctl.cli import (
    compare,
    convert,
    demo,
    eval_ae,
    eval_sr,
    export,
    lora,
    plugins,
    reconstruct,
    sample,
    superres,
    train_ae,
    train_classifier,
    train_ldm,
)
from ldmctl.cli import eval as eval_generative
from ldmctl.cli._console import err_console
from ldmctl.cli._vocab import Command
from ldmctl.errors import LdmctlError

app = typer.Typer(
    name="ldmctl",
    help="Latent diffusion models you can train on your own images, on your own machine.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=True,
)
app.command("train-ae", cls=Command)(train_ae.command)
app.command("reconstruct", cls=Command)(reconstruct.command)
app.command("eval-ae", cls=Command)(eval_ae.command)
app.command("train-ldm", cls=Command)(train_ldm.command)
app.command("sample", cls=Command)(sample.command)
app.command("export", cls=Command)(export.command)
app.command("convert", cls=Command)(convert.command)
app.command("train-lora", cls=Command)(lora.train)
app.add_typer(lora.app)
app.command("superres", cls=Command)(superres.command)
app.command("eval-sr", cls=Command)(eval_sr.command)
app.command("train-classifier", cls=Command)(train_classifier.command)
app.command("eval", cls=Command)(eval_generative.command)
app.add_typer(compare.app)
app.command("plugins", cls=Command)(plugins.command)
app.command("demo", cls=Command)(demo.command)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logs."),
) -> None:
    """Latent diffusion models you can train on your own images, on your own machine."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point. LdmctlError becomes a message; anything else is a bug."""
    try:
        app(args=argv, prog_name="ldmctl", standalone_mode=True)
    except LdmctlError as err:
        if os.environ.get("LDMCTL_TRACEBACK"):
            raise
        # messages quote user values (paths, captions): "[" in them is text, not rich markup
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
        if err.hint:
            err_console.print(f"[dim]hint: {escape(err.hint)}[/]", highlight=False)
        raise SystemExit(err.exit_code) from None
