"""Logging: a rotating file in <data_dir>/log (nothing grows forever) and,
in the foreground, the terminal."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def setup(data_dir: Path, *, level: str, max_bytes: int, backups: int,
          to_stderr: bool, name: str = "stackbox.log") -> Path:
    log_dir = data_dir / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / name
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level.upper())
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes,
                                                   backupCount=backups)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    if to_stderr:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(stream)
    for noisy in ("uvicorn.access", "sqlalchemy", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return path
