"""Terminal output: consoles that print text as it is, never as rich markup.

File names, error messages, preset fields and model notes can hold square brackets ("hf://owner/repo[/file]",
"photo[1].png"); a rich console with markup on reads them as style tags and drops them or crashes on a stray
closing tag. So our consoles have markup off, and the few styled pieces are built as Text, never as markup strings.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

__all__ = ["Text", "make_console", "styled"]


def make_console(*, stderr: bool = False) -> Console:
    """A console for user-facing output: no markup parsing, no automatic highlighting of numbers and paths."""
    return Console(stderr=stderr, highlight=False, markup=False)


def styled(*parts: str | tuple[str, str]) -> Text:
    """One line from plain strings and (text, style) pairs; no part is parsed, whatever it contains."""
    return Text.assemble(*parts)
