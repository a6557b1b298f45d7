"""How both command lines (``drrkit``, ``vertebra``) report bad input and warnings.

Bad input (a :class:`drrkit.errors.DrrkitError`, which vertebra's error subclasses; a
missing or unreadable file; too little memory) becomes one line ``error: <message>`` on
stderr and exit status :data:`EXIT_BAD_INPUT`, never a traceback. Python warnings raised
meanwhile are printed at once as one line ``warning: <message>`` each.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import typer

#: Exit status for bad input (the same as a command-line usage error).
EXIT_BAD_INPUT = 2


def fail(message: str) -> None:
    """Print the first line of ``message`` as ``error: ...`` on stderr; exit with status 2."""
    first = str(message).strip().splitlines()[0] if str(message).strip() else "unknown error"
    typer.echo(f"error: {first}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def os_message(error: OSError) -> str:
    """An OSError in words, with the file it concerns."""
    text = error.strerror or str(error) or type(error).__name__
    return f"{text}: {error.filename}" if error.filename else text


@contextlib.contextmanager
def cli_errors(memory_hint: str = "try a smaller request", *, every_warning: bool = False
               ) -> Iterator[None]:
    """Run a command's work: bad input -> ``error: ...`` and exit 2, warnings -> one line.

    Args:
        memory_hint: what to try after a MemoryError, in words.
        every_warning: print a warning each time it is raised (e.g. once per CT of a
            batch), not only the first time from one place.
    """
    from drrkit.errors import DrrkitError

    def show(message, category, filename, lineno, file=None, line=None):
        typer.echo(f"warning: {message}", err=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always" if every_warning else "default")
        warnings.showwarning = show
        try:
            yield
        except DrrkitError as error:
            fail(str(error))
        except MemoryError:
            fail(f"not enough memory for this request; {memory_hint}")
        except OSError as error:
            fail(os_message(error))
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
