"""One CLI style for every console script (setup.cfg entry points).

    ap = argparse.ArgumentParser(prog="pile-x")
    cli.common(ap)                 # --version, --log-format, --log-level
    a = ap.parse_args(argv)
    cli.setup_logging(a)
    with cli.progress("sessions", total=n, enabled=not a.json) as tick:
        ... tick() ...

Exit codes, the same in every tool (README "Exit codes"):
  0 OK            done, every check passed
  1 NO            a check failed, or the pile / platform said no
  2 USAGE         a bad flag, argument or config file (argparse's own code)
  3 UNREACHABLE   cannot reach: port busy or gone, broker or pile not answering
"""
import argparse
import contextlib
import json
import logging
import sys
import time

OK = 0
NO = 1
USAGE = 2
UNREACHABLE = 3

_DIST = "pile-companion"


def version():
    try:
        from importlib.metadata import version as v
        return v(_DIST)
    except Exception:   # running from a tree that was never installed
        return "0+unknown"


class _JsonFormatter(logging.Formatter):
    """One JSON object a line: time (ISO 8601 UTC), level, logger, message."""

    def format(self, r):
        d = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(r.created))
             + ".%03dZ" % r.msecs, "level": r.levelname.lower(), "logger": r.name,
             "message": r.getMessage()}
        if r.exc_info:
            d["exc"] = self.formatException(r.exc_info)
        return json.dumps(d, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def common(ap, log_level="info"):
    """Add --version, --log-format and --log-level to an ArgumentParser
    (log_level=None: the tool has its own --log-level)."""
    ap.add_argument("--version", action="version", version="%s %s" % (ap.prog, version()))
    ap.add_argument("--log-format", choices=("text", "json"), default="text",
                    help="logs on stderr as text lines or one JSON object a line")
    if log_level is not None:
        ap.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        default=log_level, help="the least level logged (default %s)" % log_level)
    return ap


def setup_logging(args=None, level=None, fmt=None):
    """Logs on stderr in the format the flags chose (both tools and
    libraries: the root logger)."""
    level = level or getattr(args, "log_level", None) or "info"
    fmt = fmt or getattr(args, "log_format", None) or "text"
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(_JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(h)
    root.setLevel(getattr(logging, str(level).upper()))
    return h


def progress_enabled(json_out=False, stream=None):
    """Progress shows on stderr only when it is a terminal and stdout is not
    JSON (nothing for a pipe, a log file or CI)."""
    stream = stream or sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return tty and not json_out


@contextlib.contextmanager
def progress(what, total=None, enabled=True):
    """A rich progress bar on stderr; yields advance(n=1, note=None). When
    disabled (no terminal, --json) advance() does nothing."""
    if not enabled:
        yield lambda n=1, note=None: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn,
                               TextColumn, TimeElapsedColumn)
    cols = [SpinnerColumn(), TextColumn("{task.description}")]
    if total:
        cols += [BarColumn(), MofNCompleteColumn()]
    cols += [TimeElapsedColumn(), TextColumn("{task.fields[note]}")]
    with Progress(*cols, console=Console(stderr=True), transient=True) as p:
        task = p.add_task(what, total=total, note="")

        def advance(n=1, note=None):
            if note is None:
                p.advance(task, n)
            else:
                p.update(task, advance=n, note=note)
        yield advance


def fail(prog, msg, code):
    """The one line a tool prints before exiting with `code`."""
    sys.stderr.write("%s: %s\n" % (prog, msg))
    return code

