"""Copy the latest benchmark tables (``bench/results/*.md``) into README.md.

The README keeps each table between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` markers;
``make bench`` calls this last, so the README always shows what the last run measured (the prose
around the markers is written by people and says how to read them). Tables without a result file
are left as they are.

    backend/.venv/bin/python tests/bench/update_readme.py [--readme README.md] [--results bench/results]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"(<!-- bench:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.S)


def splice(readme: str, results: Path) -> tuple[str, list[str]]:
    """README text with every marked table replaced by ``results/NAME.md`` (title line dropped)."""
    updated: list[str] = []

    def replace(m: re.Match) -> str:
        table = results / f"{m['name']}.md"
        if not table.exists():
            return m[0]
        lines = table.read_text().strip().splitlines()
        if lines and lines[0].startswith("# "):
            lines = lines[1:]
        updated.append(m["name"])
        return m[1] + "\n".join(lines).strip() + "\n" + m[4]

    return MARKER.sub(replace, readme), updated


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    text, updated = splice(args.readme.read_text(), args.results)
    args.readme.write_text(text)
    print(f"README tables updated: {', '.join(updated) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
