"""User-facing errors and the CLI wrapper that turns them into one sentence and a non-zero exit.

A user can cause an :class:`InputError` (a bad file, a bad flag, bad data); the CLIs print its
message and exit with status 2.  A :class:`TrainingDiverged` (a loss became non-finite) is one
sentence and status 3.  An ``OSError`` the system raises mid-run (disk full, a folder
removed) is one sentence and status 1.  Anything else is a bug and keeps its traceback.

Messages name the options the way the user gave them: :func:`option` spells ``layer="raw"`` for
a Python call and ``--layer raw`` while a command line runs (inside :func:`run_cli`).
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable


_NO_VALUE = object()
# Set by run_cli while a command runs.  A process-wide flag rather than a context variable, so
# that a message raised in a worker thread of a command is spelled for the command line too.
_cli_running = False


def option(name: str, value=_NO_VALUE) -> str:
    """An option as the user writes it: ``name="value"`` in Python, ``--name value`` on a command
    line (``_`` becomes ``-``; ``True``/``False`` give ``--name``/``--no-name``).

    >>> option("layer", "raw"), option("n_clusters")
    ('layer="raw"', 'n_clusters')
    """
    if not _cli_running:
        if value is _NO_VALUE:
            return name
        return f'{name}="{value}"' if isinstance(value, str) else f"{name}={value!r}"
    flag = name.replace("_", "-")
    if value is True or value is False:
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag}" if value is _NO_VALUE else f"--{flag} {value}"


class InputError(ValueError):
    """A problem with the user's input, described in one sentence."""


class TrainingDiverged(RuntimeError):
    """A loss became non-finite; the message names the stage, epoch and last good checkpoint."""


class CliParser(argparse.ArgumentParser):
    """argparse whose flag errors (an unknown flag, ``--epochs abc``) are one sentence too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # '--n-cluster' must not pass for '--n-clusters'
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        print(f"error: {message}; see '{self.prog} --help'.", file=sys.stderr)
        sys.exit(2)


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run ``main(argv)``; turn user errors into ``error: <sentence>`` and exit code 2 (3 for a
    diverged training, 1 for a refusal of the system, 130 for an interrupt)."""
    global _cli_running
    _cli_running = True
    try:
        code = main(argv)
    except (InputError, TrainingDiverged) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, InputError) else 3)
    except OSError as exc:  # the machine refused (disk full, a folder gone or read-only mid-run)
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"error: the system refused an operation: {exc.strerror or exc}{where}.", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command with --resume to continue from the last "
              "checkpoint", file=sys.stderr)
        sys.exit(130)
    finally:
        _cli_running = False
    sys.exit(code or 0)
