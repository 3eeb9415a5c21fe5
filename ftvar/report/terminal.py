"""Terminal tables that stay readable at 80 columns (a small terminal, a SLURM log, a pipe).

rich draws a table as wide as its longest header and cell and, when that does not fit, cuts every column with
an ellipsis — the numbers included. Here a table has no vertical rules and no outer padding (columns two
spaces apart, one where two do not fit), each header is wrapped onto lines no wider than its column's widest
cell, and a cell of long prose (a reason, a note) can be printed below the table as a numbered note instead of
being folded into a narrow column. A table wider than the console even so is printed one row at a time.
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Iterator, Sequence

from rich import box
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.errors import MarkupError
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

LONG = 48  # cells wider than this many characters become notes below the table


def width(cell: str, markup: bool = True) -> int:
    """A cell's printed width (rich markup not counted when `markup`)."""
    text = Text(cell)
    if markup:
        with contextlib.suppress(MarkupError):
            text = Text.from_markup(cell)
    return max((len(line) for line in text.plain.splitlines()), default=0)


def header(text: str, cells: Sequence[str], markup: bool = True) -> str:
    """`text` wrapped onto lines as wide as the column's widest cell, or its own longest word if wider."""
    words = text.split()
    if not words:
        return text
    limit = max([width(c, markup) for c in cells] + [max(len(w) for w in words)])
    return "\n".join(textwrap.wrap(text, limit, break_long_words=False))


class Compact:
    """A table of `rows` under `headers`, the columns in `right` right-aligned; no cell is cut or folded. The
    cells' rich markup is read when `markup`, else they are printed as they are. With `notes`, cells wider
    than LONG are printed below the table as numbered notes. Columns are two spaces apart where the table
    fits the console, one where only that fits; a table that does not fit even so is printed one row at a
    time, each cell after its header's name."""

    def __init__(
        self,
        headers: Sequence[str],
        rows: Sequence[Sequence[str]],
        title: str | None = None,
        caption: str | None = None,
        right: Sequence[int] = (),
        markup: bool = True,
        notes: bool = False,
    ) -> None:
        self.headers, self.rows = list(headers), [list(r) for r in rows]
        self.title, self.caption, self.right, self.markup = title, caption, set(right), markup
        self.notes = notes

    def text(self, cell: str) -> Text:
        return Text.from_markup(cell) if self.markup else Text(cell)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], gap: int) -> Table:
        """The table of `rows` under `headers` (wrapped) with columns `gap` (1 or 2) spaces apart."""
        table = Table(box=box.SIMPLE_HEAD, padding=(0, gap - 1), collapse_padding=True, pad_edge=False)
        for i, text in enumerate(headers):
            table.add_column(Text(text), justify="right" if i in self.right else "left", no_wrap=True)
        for row in rows:
            table.add_row(*(cell if self.markup else Text(cell) for cell in row))
        return table

    def rows_one_by_one(self) -> Iterator[RenderableType]:
        """Each row as lines: its first cell, then every other cell after its header's name (indented)."""
        for i, row in enumerate(self.rows):
            if i:
                yield Text()
            yield Text.assemble(Text(f"{self.headers[0]}: ", style="bold"), self.text(row[0]))
            for name, cell in zip(self.headers[1:], row[1:], strict=True):
                line = Text.assemble(f"{' '.join(name.split())}: ", self.text(cell))
                yield Padding(line, (0, 0, 0, 2), expand=False)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        short, notes = with_notes(self.rows, markup=self.markup) if self.notes else (self.rows, [])
        if self.title:  # above and below the table, wrapped at the console's width, not the table's
            yield Text(self.title, style="table.title")
        headers = [header(h, [row[i] for row in short], self.markup) for i, h in enumerate(self.headers)]
        for gap in (2, 1):
            table = self.table(headers, short, gap)
            if Measurement.get(console, options.update_width(10_000), table).maximum <= options.max_width:
                yield table
                for k, note in enumerate(notes, 1):
                    yield Text.assemble(f"note {k}: ", self.text(note))
                break
        else:
            yield from self.rows_one_by_one()
        if self.caption:
            yield Text(self.caption, style="table.caption")


def with_notes(
    rows: Sequence[Sequence[str]], long: int = LONG, markup: bool = True
) -> tuple[list[list[str]], list[str]]:
    """The rows with every cell wider than `long` replaced by "note k", and the notes' texts in order (a text
    that repeats is one note)."""
    notes: dict[str, int] = {}
    out: list[list[str]] = []
    for row in rows:
        cells = []
        for cell in row:
            if width(cell, markup) > long:
                cells.append(f"note {notes.setdefault(cell, len(notes) + 1)}")
            else:
                cells.append(cell)
        out.append(cells)
    return out, list(notes)
