"""`leadre serve …` and `leadre pipeline …`: the serving processes and the daily cycle.

Shared by the services: each process adds its own command here (small functions that
import their module lazily, so `leadre --help` stays fast).
"""

from __future__ import annotations

import typer

serve_app = typer.Typer(help="Run the serving processes (inference, worker, user server, mixer).",
                        no_args_is_help=True)
pipeline_app = typer.Typer(help="Operational pipelines (the daily training cycle).",
                           no_args_is_help=True)
