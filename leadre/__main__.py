"""``python -m leadre …`` is the ``leadre`` command (the launcher starts its children so)."""

from leadre.cli import app

app()
