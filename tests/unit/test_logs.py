"""The log file: one per process, rotated by size without a stat per record."""

from __future__ import annotations

import logging

from stackbox.common import logs


def test_the_log_file_rotates_at_its_size_and_keeps_its_backups(tmp_path):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    lookups = (logging._srcfile, logging.logThreads, logging.logProcesses,
               logging.logMultiprocessing)
    try:
        path = logs.setup(tmp_path, level="info", max_bytes=2000, backups=2, to_stderr=False,
                          name="w.log")
        log = logging.getLogger("stackbox.test")
        for i in range(100):
            log.info("line %03d %s", i, "x" * 40)
        root.handlers[0].flush()
        files = sorted(p.name for p in (tmp_path / "log").iterdir())
        assert files == ["w.log", "w.log.1", "w.log.2"]
        for p in (tmp_path / "log").iterdir():
            assert 0 < p.stat().st_size <= 2000
        assert "line 099" in path.read_text()
        # a restart appends to the file it finds and counts its size
        before = path.stat().st_size
        logs.setup(tmp_path, level="info", max_bytes=2000, backups=2, to_stderr=False,
                   name="w.log")
        log.info("after restart")
        assert path.stat().st_size > before or "after restart" in path.read_text()
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:], root.level = saved
        (logging._srcfile, logging.logThreads, logging.logProcesses,
         logging.logMultiprocessing) = lookups


def test_records_skip_the_lookups_the_format_never_prints(tmp_path, monkeypatch):
    """The caller's frame, thread and process are not looked up; the line
    is the same."""
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, name, getattr(logging, name))
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    path = logs.setup(tmp_path, level="info", max_bytes=0, backups=0, to_stderr=False)
    seen = []
    catcher = logging.Handler()
    catcher.emit = seen.append
    root.addHandler(catcher)
    try:
        logging.getLogger("stackbox.test").info("hello %s", "there")
    finally:
        for h in root.handlers:
            h.close()
    (record,) = seen
    assert (record.lineno, record.thread, record.process) == (0, None, None)
    line = path.read_text().strip()
    assert line.endswith(" INFO stackbox.test hello there"), line
