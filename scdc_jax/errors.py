"""User-facing errors and the CLI wrapper that turns them into one sentence and exit code 2.

A user can cause an :class:`InputError` (a bad file, a bad flag, bad data); the CLIs print its
message and exit with status 2.  An ``OSError`` the system raises mid-run (disk full, a folder
removed) is one sentence and status 1.  Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable


class InputError(ValueError):
    """A problem with the user's input, described in one sentence."""


class TrainingDiverged(RuntimeError):
    """A loss became non-finite; the message names the stage, epoch and last good checkpoint."""


class CliParser(argparse.ArgumentParser):
    """argparse whose flag errors (an unknown flag, ``--epochs abc``) are one sentence too."""

    def error(self, message: str):
        print(f"error: {message}; see '{self.prog} --help'.", file=sys.stderr)
        sys.exit(2)


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run ``main(argv)``; turn user errors into ``error: <sentence>`` and exit code 2."""
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
    sys.exit(code or 0)
