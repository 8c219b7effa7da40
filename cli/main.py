"""The `anomaly` command line. One module per command; options become typed configs there, once.

Importing this module loads typer and pydantic only: each command imports the heavy parts it needs
(torch, OpenCV, the service) when it runs, so `anomaly --help` answers at once.
"""

import shutil

import typer

from cli import calibrate, evaluate, export, review, samples, score, serve, train
from cli.allocator import keep_freed_memory

app = typer.Typer(
    help="Find unusual frames in dashcam footage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rich formatting costs 0.4 s per --help
    add_completion=False,
    # help wraps at the terminal's width, not click's default of 80 columns
    context_settings={"max_content_width": max(80, shutil.get_terminal_size().columns)},
)
app.command()(train.train)
app.command()(score.score)
app.command()(calibrate.calibrate)
app.command()(export.export)
app.command()(evaluate.evaluate)
app.command()(serve.serve)
app.command()(review.review)
app.command()(samples.demo)
app.command("generate-samples")(samples.generate_samples)


def main() -> None:  # pragma: no cover - console entry point
    """`anomaly` and `python -m anomaly`: the process-wide settings of a scoring process, then the command."""
    keep_freed_memory()
    app(prog_name="anomaly")
