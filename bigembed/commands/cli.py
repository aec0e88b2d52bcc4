"""The ``bigembed`` command line: parses arguments and calls the library; nothing more.

Each subcommand lives in ``bigembed/commands/<name>.py`` with ``register(subparsers)``; add a
new one to :data:`COMMANDS`. Errors bigembed raises on purpose print as one line and exit 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import re
import sys

from ..errors import BigembedError

#: subcommand modules under bigembed.commands, in --help order
COMMANDS = ["demo", "synth", "ingest", "extract", "info", "gc", "reduce", "index", "neighbors",
            "compare", "cluster", "render", "serve", "bench"]
#: commands whose heavy stages can run on a Dask cluster (``--cluster``)
CLUSTER_COMMANDS = ["extract", "ingest", "index", "reduce", "compare"]


def build_parser() -> argparse.ArgumentParser:
    from .._version import __version__

    p = argparse.ArgumentParser(
        prog="bigembed",
        description="Explore million-point embedding sets: extract, reduce, index, view.",
    )
    p.add_argument("--version", action="version", version=f"bigembed {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no informational lines or logging: only what was asked for (tables, "
                   "JSON), warnings and errors")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"bigembed.commands.{name}").register(sub)
    for name in CLUSTER_COMMANDS:
        sub.choices[name].add_argument(
            "--cluster", metavar="ADDRESS|local:N",
            help="run the heavy part on a Dask cluster: a scheduler address "
            "(tcp://HOST:PORT) or local:N worker processes on this machine; the dataset must "
            "be on storage every worker sees at the same path")
    p.set_defaults(_commands=sub.choices)
    return p


_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}

_LEADING_NAME = re.compile(r"^([a-z][a-z0-9_]*)(?:=('[^']*'|\S+)|(?=[ :]))")


def cli_message(message: str, command_parser) -> str:
    """A library error message with its leading Python parameter name (``n_neighbors must
    be ...``, ``backend='gpu' ...``) replaced by the command's flag (``--n-neighbors``)."""
    flags = {a.dest: a.option_strings[-1] for a in command_parser._actions if a.option_strings}
    m = _LEADING_NAME.match(message)
    if not m or m.group(1) not in flags:
        return message
    flag = flags[m.group(1)]
    if m.group(2) is not None:  # name='value' -> --flag value
        flag += " " + m.group(2).strip("'")
    return flag + message[m.end():]


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    if verbose < 2:
        for noisy in ("numba", "matplotlib", "bokeh", "tornado", "PIL", "asyncio", "faiss"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    if args.quiet:
        from . import _common

        _common.QUIET = True
    if args.no_progress:
        from ..progress import set_progress

        set_progress(False)
    try:
        if getattr(args, "cluster", None):
            from ..distributed.api import cluster

            with cluster(args.cluster):
                rc = args.func(args)
        else:
            rc = args.func(args)
    except BigembedError as e:
        msg = cli_message(str(e), args._commands[args.command])
        print(f"bigembed {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:
        # A refused write or a full disk the library did not name: still one line, exit 2.
        if e.errno not in _USER_ERRNOS:
            raise
        print(f"bigembed {args.command}: error: {e.strerror}: {e.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bigembed {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
