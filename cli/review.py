"""`anomaly review`: a page to review a scored run's events (clips, verdicts), or its verdicts as labels."""

import getpass
import os
from pathlib import Path
from typing import Annotated

import typer

from cli.options import TokenEnvOpt, TokenFileOpt, friendly_errors
from service.settings import TOKEN_ENV


@friendly_errors
def review(
    run: Annotated[Path, typer.Argument(help="run folder holding events.json (and clips), or an events JSON file")],
    host: Annotated[str, typer.Option(help="address to listen on (beyond loopback only with a token)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="port (0 picks a free one)")] = 8800,
    token_file: TokenFileOpt = None,
    token_env: TokenEnvOpt = TOKEN_ENV,
    reviewer: Annotated[
        str | None, typer.Option(help="name stored with verdicts when the page gives none (default: your login)")
    ] = None,
    export_labels: Annotated[
        Path | None,
        typer.Option(help="write the verdicts as the interval label CSV `anomaly evaluate` reads, and exit"),
    ] = None,
) -> None:
    """Review the events of a scored run in the browser: clips, verdicts by key, labels for evaluate."""
    from review.run import load_run
    from review.server import make_review_server
    from review.settings import ReviewSettings
    from review.store import ReviewStore, label_rows
    from review.store import export_labels as write_labels
    from service.settings import read_auth_token

    loaded = load_run(run)
    if export_labels is not None:
        verdicts = ReviewStore.open_existing(loaded.db_path).history()
        write_labels(verdicts, export_labels)
        rows = label_rows(verdicts)
        typer.echo(
            f"{sum(1 for r in rows if r[1])} anomalous stretch(es) of {len({r[0] for r in rows})} labeled source(s) "
            f"-> {export_labels}"
        )
        return
    settings = ReviewSettings(
        run=run,
        host=host,
        port=port,
        auth_token=read_auth_token(token_env, token_file, os.environ),
        reviewer=reviewer if reviewer is not None else getpass.getuser(),
        log_level="warning",
    )
    reviewed = len(ReviewStore(loaded.db_path).latest())
    typer.echo(f"{len(loaded.events)} event(s) of {loaded.root}, {reviewed} reviewed; verdicts in {loaded.db_path}")
    server = make_review_server(settings, loaded, on_ready=lambda url: typer.echo(f"open {url}  (Ctrl-C stops)"))
    server.run()
    if not server.started:
        raise OSError(f"the review page could not start on {host}:{port} (see the log above)")
