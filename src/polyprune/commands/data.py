"""``polyprune data languages``: which languages have data locally (FLORES, XNLI, MARC)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli import data_app, examples


def language_table(data_dir: Path | None, show_all: bool = False) -> list[dict]:
    """One row per language: code, name, ISO 639-1, and the local FLORES/XNLI/MARC files found
    (``"hub"`` for FLORES without a data folder; ``None`` where a dataset lacks the language)."""
    from ..data.flores import flores_path
    from ..languages import LANGUAGES
    rows = []
    for lang in sorted(LANGUAGES.values(), key=lambda x: x.code):
        if data_dir is None:
            row = {"flores": "hub", "xnli": lang.xnli, "marc": lang.marc}
        else:
            xnli = data_dir / "xnli" / "test" / f"{lang.xnli}.jsonl.gz" if lang.xnli else None
            marc = data_dir / "marc" / f"{lang.marc}.jsonl.gz" if lang.marc else None
            row = {"flores": "yes" if flores_path(lang, data_dir).is_file() else None,
                   "xnli": lang.xnli if xnli is not None and xnli.is_file() else None,
                   "marc": lang.marc if marc is not None and marc.is_file() else None}
            if not show_all and not any(row.values()):
                continue
        rows.append({"code": lang.code, "name": lang.name, "iso1": lang.iso1, **row})
    return rows


@data_app.command("languages", epilog=examples("polyprune data languages", "polyprune data languages --all",
                                               "polyprune data languages --data-dir ../shared/data"))
def languages(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Local data folder (layout as ../shared/data; 'hub' for the Hugging Face hub). Default: $POLYPRUNE_DATA_DIR, else ./shared/data or ../shared/data when present, else the hub."),
    show_all: bool = typer.Option(False, "--all", help="Also list languages without local data."),
) -> None:
    """List languages with the FLORES / XNLI / MARC data available (locally, or on the hub)."""
    from ..data import resolve_data_dir
    d = resolve_data_dir(data_dir)
    rows = language_table(d, show_all)
    cols = ["code", "name", "iso1", "flores", "xnli", "marc"]
    cells = [[str(r[c]) if r[c] else "-" for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(cols)]
    typer.echo("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)).rstrip())
    for x in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(x, widths)).rstrip())
    where = f"in {d}" if d else "on the hub (no local data folder: --data-dir, POLYPRUNE_DATA_DIR, ../shared/data)"
    n_flores = sum(r["flores"] == "yes" for r in rows)
    typer.echo(f"{len(rows)} languages {where}" + (f"; FLORES-200 devtest for {n_flores}" if d else ""))
