"""Errors a person can act on become one line on stderr and an exit code, never a traceback.

Exit codes: 1 the work failed (a document, the store, the model, the disk), 2 the command
was wrong (a missing path, an unknown id, a bad option), 130 interrupted (Ctrl-C). Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

import click
import typer

from doc2lora_rag.errors import Doc2LoRAError, InvalidDocumentError, UnknownIdError
from doc2lora_rag.readers import MissingPathError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class CommandError(Doc2LoRAError):
    """A problem the command itself found (a bad option value, an export target in use)."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def describe(error: BaseException) -> tuple[str, int] | None:
    """The message and exit code for an error a person can fix; None for a bug."""
    if isinstance(error, CommandError):
        return str(error), error.code
    if isinstance(error, OSError) and error.errno in _DISK_FULL:
        where = f" writing {error.filename}" if error.filename else ""
        return (
            f"no space left on the device{where}; free some space (or use --store on another disk) "
            "and run the same command again: finished documents are kept",
            EXIT_FAILED,
        )
    if isinstance(error, MissingPathError | UnknownIdError | InvalidDocumentError):
        return str(error), EXIT_USAGE
    if isinstance(error, Doc2LoRAError):
        return str(error), EXIT_FAILED
    if isinstance(error, PermissionError):
        return f"permission denied: {error.filename or error}", EXIT_FAILED
    if isinstance(error, FileNotFoundError):
        return f"no such file or directory: {error.filename or error}", EXIT_USAGE
    if isinstance(error, OSError):
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror or error}{where}", EXIT_FAILED
    return None


def fail(message: str, code: int) -> typer.Exit:
    """Print ``error: message`` on stderr; raise the returned Exit."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def warn(message: str) -> None:
    """Print ``warning: message`` on stderr; the command goes on."""
    typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW)


@contextmanager
def user_errors() -> Iterator[None]:
    """Wrap a command body: known errors print one line and exit with their code."""
    try:
        yield
    except (typer.Exit, click.ClickException, click.exceptions.Abort):
        raise
    except KeyboardInterrupt:
        raise fail("interrupted", EXIT_INTERRUPTED) from None
    except Exception as error:
        known = describe(error)
        if known is None:
            raise
        raise fail(*known) from None
