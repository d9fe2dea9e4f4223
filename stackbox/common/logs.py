"""Logging: a rotating file in <data_dir>/log (nothing grows forever) and,
in the foreground, the terminal."""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class _Formatter(logging.Formatter):
    """FORMAT, with the date and time made once a second (time.strftime on
    every line was a third of an access-log line's cost)."""

    _second, _text = -1, ""

    def formatTime(self, record, datefmt=None):
        second = int(record.created)
        if second != self._second:
            self._text = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return self.default_msec_format % (self._text, record.msecs)


class _LogFile(logging.handlers.RotatingFileHandler):
    """RotatingFileHandler that formats each record once and keeps the file's
    size itself. The standard one stats the path twice, formats the record a
    second time and seeks to the end for every record; with one access-log
    line per object request that was ~5% of a small GET's CPU. Every process
    writes its own file (stackbox.log, object-worker-N.log), so the size kept
    here is the file's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._size = self.stream.tell() if self.stream is not None else 0

    def emit(self, record):
        try:
            msg = self.format(record) + self.terminator
            if self.stream is None:
                self.stream = self._open()
                self._size = self.stream.tell()
            if self.maxBytes > 0 and self._size + len(msg) > self.maxBytes and self._size:
                self.doRollover()
                self._size = 0
                if self.stream is None:
                    self.stream = self._open()
            self.stream.write(msg)
            self.stream.flush()
            self._size += len(msg)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def setup(data_dir: Path, *, level: str, max_bytes: int, backups: int,
          to_stderr: bool, name: str = "stackbox.log") -> Path:
    log_dir = data_dir / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / name
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level.upper())
    handler = _LogFile(path, maxBytes=max_bytes, backupCount=backups)
    handler.setFormatter(_Formatter(FORMAT))
    root.addHandler(handler)
    if to_stderr:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(_Formatter(FORMAT))
        root.addHandler(stream)
    # FORMAT names no thread or process, file, line or function: a record
    # need not look them up (no _srcfile: no walk up the stack for the
    # caller's frame, ~0.4% of a small PUT's samples with its access line)
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    for noisy in ("uvicorn.access", "sqlalchemy", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return path
