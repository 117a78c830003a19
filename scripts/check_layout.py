#!/usr/bin/env python3
"""Check docs/layout.md against the tree.

Every file of filter/src/ (recursively) and tests/tests/ must be named, in backticks, in
the table row of its folder. A row's folder is its first cell, relative to the folder a
`## ...` heading names in backticks (`## The filter: `filter/src/``, so `flow/steps/`
is filter/src/flow/steps/; `./` is the heading's folder), or to the repository root
under a heading that names none (as scripts/check_docs.py reads the page). Every path
the page names in backticks must exist: a name with a `/` or a file extension is looked
up from the repository root, then from the folder of its row; an absolute path (outside
the repository) is an error.
Python standard library only. Broken pages are fed first and each must be caught
(`self-test:` lines).
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "layout.md"
COMPLETE = ["filter/src", "tests/tests"]
TICK = re.compile(r"`([^`]+)`")
EXTENSIONS = (".rs", ".py", ".md", ".yaml", ".yml", ".tsv", ".json", ".toml", ".txt")
PATHLIKE = re.compile(r"^[A-Za-z0-9_.\-/]+$")


def rows(text):
    """Yields (the section's folder, the row's folder relative to the root or None,
    [backticked names]) per line (None for a line that is not a table row)."""
    base = ""
    for line in text.splitlines():
        heading = re.match(r"^## .*`([\w./-]+/)`", line)
        if heading:
            base = heading[1]
        elif line.startswith("## "):
            base = ""
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            first = TICK.findall(cells[0]) if cells else []
            folder = None
            if first and first[0].endswith("/"):
                folder = (Path(base) / first[0]).as_posix().rstrip("/") if first[0] != "./" else base.rstrip("/")
            yield base, folder, TICK.findall(line)
        else:
            yield base, None, TICK.findall(line)


def check(text, root):
    errors = []
    named = {}
    for base, folder, names in rows(text):
        if folder:
            named.setdefault(folder, set()).update(names)
        for name in names:
            if name.startswith("/"):
                errors.append(f"{name}: outside the repository")
                continue
            if not PATHLIKE.match(name) or not ("/" in name or name.endswith(EXTENSIONS)):
                continue
            if name.startswith(("http", "www.")):
                continue
            candidates = [root / name, root / base / name] + ([root / folder / name] if folder else [])
            if not any(c.exists() for c in candidates):
                errors.append(f"{name}: no such file or folder" + (f" (row {folder})" if folder else ""))
    for top in COMPLETE:
        base = root / top
        files = sorted(base.rglob("*.rs")) if top == "filter/src" else sorted(p for p in base.iterdir() if p.is_file())
        for path in files:
            folder = path.parent.relative_to(root).as_posix()
            if path.name not in named.get(folder, set()):
                errors.append(f"{path.relative_to(root)}: not named in the `{folder}/` row")
    return errors


def self_test():
    good = PAGE.read_text()
    broken = {
        "a file left out": good.replace("`header_map.rs` (", "(", 1),
        "a path that does not exist": good + "\n| `filter/src/` | `nowhere.rs` |\n",
        "a path outside the repository": good + "\nsee `/work/shared/tools/x.py`\n",
    }
    ok = True
    baseline = len(check(good, ROOT))
    for what, page in broken.items():
        caught = len(check(page, ROOT)) > baseline
        print(f"self-test: {what}: {'caught' if caught else 'MISSED'}")
        ok &= caught
    return ok


def main():
    if not self_test():
        print("check_layout.py: a broken page was not caught", file=sys.stderr)
        return 1
    errors = check(PAGE.read_text(), ROOT)
    for e in errors:
        print(f"docs/layout.md: {e}", file=sys.stderr)
    if errors:
        return 1
    print("docs/layout.md matches the tree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
