"""Where the CLI's tables and messages go: the one place that makes rich consoles.

User text is data. Pod and namespace names, filters, selectors, notes, end reasons and error messages come from
users (or from the collector, which got them from users), and rich reads ``[...]`` in a string as markup and
``:name:`` as an emoji: the filter ``tcp[tcpflags] & tcp-syn != 0`` showed as ``tcp & tcp-syn != 0``. So every
string given to rich is markup, and user text goes into it through one helper, ``rich.markup.escape`` (re-exported
here as ``escape``); the consoles made here never turn ``:name:`` into emoji nor colour numbers and words of user
text, and styled text, where wanted, is a ``rich.text.Text`` with an explicit style (``styled``). Every rich
console of the CLI comes from ``console``; the tests print user strings full of markup through every table and
message and expect them back verbatim.

Off a terminal (piped into a file, ``less``, a script) output is full width and unpadded: never squeezed to 80
columns nor wrapped, no spaces after the last character of a line. rich pads a table's title and caption to the
table's width and wraps them there, so ``print_table`` prints them as lines of their own around the table.
"""

from __future__ import annotations

import os
import sys
from typing import IO

from rich.console import Console, Group, RenderableType
from rich.markup import escape as rich_escape
from rich.table import Table
from rich.text import Text

# Off a terminal: wide enough that no table or line is ever cut or wrapped (rich lays out up to this width and
# writes no more than the content needs).
UNBOUNDED_WIDTH = 1_000_000


def is_terminal(stream: IO[str]) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or replaced by something without a descriptor (tests)
        return False


def console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr) for markup with user text escaped: no emoji codes, no highlighting; off a
    terminal, full width."""
    stream = sys.stderr if stderr else sys.stdout
    terminal = is_terminal(stream)
    return Console(file=stream, emoji=False, highlight=False, width=None if terminal else UNBOUNDED_WIDTH)


def styled(text: str, style: str) -> Text:
    """``text`` shown with a rich style (``"bold"``), its content never read as markup."""
    return Text(text, style=style)


def escape(text: str) -> str:
    """User text inside rich markup: shown as it is (``[tcpflags]`` stays)."""
    return rich_escape(text)


def framed(table: Table) -> RenderableType:
    """The table with its title above and its caption below as plain lines of text: not wrapped at, nor padded
    to, the table's width (what rich does with a table's own title and caption)."""
    title, caption = table.title, table.caption
    if title is None and caption is None:
        return table
    table.title = table.caption = None
    parts: list[RenderableType] = []
    if title is not None:
        parts.append(Text.from_markup(title, emoji=False) if isinstance(title, str) else title)
    parts.append(table)
    if caption is not None:
        parts.append(Text.from_markup(caption, emoji=False) if isinstance(caption, str) else caption)
    return Group(*parts)


def print_table(table: Table, *, stderr: bool = False) -> None:
    console(stderr=stderr).print(framed(table))


def say(message: str, *, stderr: bool = True) -> None:
    """One message line (stderr by default): markup, with user text escaped."""
    console(stderr=stderr).print(message)
