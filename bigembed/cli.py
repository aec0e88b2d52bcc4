"""The ``bigembed`` command line: parses arguments and calls the library; nothing more.

Each subcommand lives in ``bigembed/commands/<name>.py`` with ``register(subparsers)``; add a
new one to :data:`COMMANDS`. Errors bigembed raises on purpose print as one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import BigembedError

#: subcommand modules under bigembed.commands, in --help order
COMMANDS = ["demo", "synth", "ingest", "extract", "info", "reduce", "index", "neighbors",
            "render", "serve", "bench"]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog="bigembed",
        description="Explore million-point embedding sets: extract, reduce, index, view.",
    )
    p.add_argument("--version", action="version", version=f"bigembed {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"bigembed.commands.{name}").register(sub)
    return p


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
    if args.no_progress:
        from .progress import set_progress

        set_progress(False)
    try:
        rc = args.func(args)
    except BigembedError as e:
        print(f"bigembed {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bigembed {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
