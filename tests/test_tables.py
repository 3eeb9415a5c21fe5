"""Terminal tables at 80 columns: nothing cut, headers wrapped, long prose as notes."""

from __future__ import annotations

import io

from rich.console import Console

from ftvar.report.terminal import Compact, header, with_notes


def render(renderable: object, width: int = 80) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


HEADERS = ["trial", "learning rate", "batch size", "epochs", "seed", "status", "acc", "f1", "loss", "sec"]
ROWS = [
    ["0171e0bbcc", "0.0003", "16", "1", "0", "[green]ok[/green]", "0.520", "0.683", "0.693", "0.9"],
    ["baseline", "–", "–", "0", "0", "[yellow]diverged[/yellow]", "0.484", "0.000", "0.694", "12.1"],
]


def test_a_launch_summary_keeps_every_value_whole_at_80_columns() -> None:
    out = render(Compact(HEADERS, ROWS, title="smoke: 2 trial(s)", right=range(1, 10)))
    assert "…" not in out
    for row in ROWS:
        line = next(line for line in out.splitlines() if row[0] in line)
        assert line.split() == [row[0], *row[1:5], row[5].split("]")[1].split("[")[0], *row[6:]]
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80
    assert "learning" in out and "rate" in out  # the header wrapped onto two lines


def test_a_title_and_caption_wider_than_the_table_wrap_at_the_console_not_the_table() -> None:
    title = "study smoke (hash dd28cf53e5d7) · 9 trials · /a/long/output/folder/smoke"
    caption = "model: tiny random-init DistilBERT · data: synthetic · from builtin:smoke"
    out = render(Compact(["trial", "seed"], [["0171e0bbcc", "0"]], title=title, caption=caption))
    assert title in out.splitlines()[0] and any(caption in line for line in out.splitlines())


def test_columns_are_two_spaces_apart_where_they_fit_and_one_where_not() -> None:
    rows = [["accuracy", "absolute", "non-degenerate", "6", "0.965", "0.755", "0.34", "none"]]
    headers = ["metric", "fit", "trials", "n", "R²", "adj. R²", "F p (all terms)", "significant terms"]
    wide = render(Compact(headers, rows, markup=False), width=120)
    narrow = render(Compact(headers, rows, markup=False), width=68)
    assert "accuracy  absolute  non-degenerate" in wide
    assert "accuracy absolute non-degenerate" in narrow and "…" not in narrow


def test_headers_wrap_to_the_widest_cell_but_never_inside_a_word() -> None:
    assert header("learning rate", ["0.0003", "0.003"]) == "learning\nrate"
    assert header("significant terms (Holm p < 0.05)", ["none"]) == "significant\nterms (Holm\np < 0.05)"
    assert header("acc", ["0.520"]) == "acc"
    assert header("status", ["[green]ok[/green]"]) == "status"  # markup is not width


def test_long_cells_become_numbered_notes_and_a_repeated_text_is_one_note() -> None:
    reason = "too few trials: 6 ok trial(s) for 6 parameters; need at least 7 (add seeds or design points)"
    rows, notes = with_notes([["accuracy", reason], ["F1", reason], ["loss", "short [b]x[/b]"]], markup=False)
    assert rows == [["accuracy", "note 1"], ["F1", "note 1"], ["loss", "short [b]x[/b]"]]
    assert notes == [reason]


def test_notes_are_printed_as_plain_text_after_the_table() -> None:
    why = "the fit failed: [not markup] because the design has a column of zeros; add design points"
    rows = [["accuracy", why], ["F1", "[b]ok[/b]"]]
    out = render(Compact(["metric", "why"], rows, markup=False, notes=True))
    assert "note 1" in out.split("note 1:")[0]  # the mark in the table, above the note
    assert "[not markup]" in " ".join(out.split()) and "[b]ok[/b]" in out


def test_a_table_too_wide_for_the_console_is_printed_row_by_row_with_nothing_cut() -> None:
    headers = ["effect", "this study's term (coding)", "paper p", "coef [95% CI]", "verdict", "why"]
    row = [
        "learning rate",
        "lr (learning rate, log10, centred), absolute fit",
        "0.027 (higher → lower)",
        "-0.151 [-0.62, 0.318]",
        "inconclusive",
        "not significant here; with 80% power this study detects slopes of |3.1| or more",
    ]
    out = render(Compact(headers, [row, row], title="Paper comparison", markup=False, notes=True))
    assert "…" not in out and out.startswith("Paper comparison")
    flat = " ".join(out.split())
    assert flat.count("effect: learning rate") == 2
    for name, cell in zip(headers[1:], row[1:], strict=True):
        assert f"{name}: {cell}" in flat
    assert "note 1" not in out  # row by row, the long cells are printed in place
