#!/usr/bin/env python3
"""Checks that the Markdown tables of the action's inputs and outputs match action.yml exactly.

    check_readme_table.py ACTION_YML MARKDOWN...  # README.md, docs/action.md
    check_readme_table.py --print ACTION_YML      # prints the tables as they should be

The section `## Use it in a workflow` of each Markdown file holds two tables:

    | input | description | default |        one row per input of action.yml, in its order;
    |---|---|---|                             the default in backticks, empty when it is ''
    | `version` | The peercache ... | |

    | output | description |                  one row per output, in its order
    |---|---|

Names, order, descriptions (word for word) and defaults must all match; every difference is
printed, and the exit status is 1 when there is any.
"""

import re
import sys

from ruamel.yaml import YAML

SECTION = "## Use it in a workflow"


def cells(line: str) -> list[str]:
    """The cells of one Markdown table row, with `\\|` unescaped."""
    inner = line.strip()[1:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def tables(section: list[str]) -> dict[str, list[list[str]]]:
    """The tables of a section, keyed by the first header cell."""
    found: dict[str, list[list[str]]] = {}
    i = 0
    while i < len(section):
        line = section[i].strip()
        if line.startswith("|") and i + 1 < len(section) and re.match(r"^\|(\s*:?-+:?\s*\|)+$", section[i + 1].strip()):
            header = cells(line)
            rows = []
            i += 2
            while i < len(section) and section[i].strip().startswith("|"):
                rows.append(cells(section[i]))
                i += 1
            found[header[0]] = [header] + rows
        else:
            i += 1
    return found


def expected(action: dict) -> dict[str, list[list[str]]]:
    """The two tables as action.yml says they should be: header row, then one row per entry."""
    return {
        "input": [["input", "description", "default"]]
        + [
            [f"`{name}`", str(spec["description"]).strip(), f"`{spec['default']}`" if str(spec.get("default", "")) else ""]
            for name, spec in (action.get("inputs") or {}).items()
        ],
        "output": [["output", "description"]]
        + [[f"`{name}`", str(spec["description"]).strip()] for name, spec in (action.get("outputs") or {}).items()],
    }


def render(rows: list[list[str]]) -> str:
    def row(r: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in r) + " |"

    return "\n".join([row(rows[0]), "|" + "---|" * len(rows[0])] + [row(r) for r in rows[1:]])


def main() -> int:
    if sys.argv[1] == "--print":
        with open(sys.argv[2], encoding="utf-8") as f:
            want = expected(YAML(typ="safe").load(f))
        print(render(want["input"]) + "\n\n" + render(want["output"]))
        return 0
    action_path = sys.argv[1]
    with open(action_path, encoding="utf-8") as f:
        want = expected(YAML(typ="safe").load(f))
    failed = 0
    for readme_path in sys.argv[2:]:
        failed |= check(want, readme_path)
    return failed


def check(want: dict[str, list[list[str]]], readme_path: str) -> int:
    """Prints every difference between README_PATH's tables and WANT; 1 when there is any."""
    with open(readme_path, encoding="utf-8") as f:
        lines = f.read().splitlines()

    try:
        start = lines.index(SECTION)
    except ValueError:
        print(f"{readme_path}: no section {SECTION!r}")
        return 1
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    found = tables(lines[start + 1 : end])

    problems = []
    for kind, rows in want.items():
        got = found.get(kind)
        if got is None:
            problems.append(f"{readme_path}: no table with the header {' | '.join(rows[0])} under {SECTION!r}")
            continue
        if got[0] != rows[0]:
            problems.append(f"{readme_path}: the {kind} table's header is {got[0]}, expected {rows[0]}")
        got_names = [r[0] for r in got[1:]]
        want_names = [r[0] for r in rows[1:]]
        if got_names != want_names:
            problems.append(f"{kind}s in {readme_path}: {got_names}\n  {kind}s in action.yml: {want_names}")
        by_name = {r[0]: r for r in got[1:]}
        for row in rows[1:]:
            mine = by_name.get(row[0])
            if mine is not None and mine != row:
                problems.append(f"{kind} {row[0]}:\n  {readme_path}:  {mine[1:]}\n  action.yml: {row[1:]}")

    for p in problems:
        print(p)
    if not problems:
        print(f"{readme_path}: the tables match action.yml ({len(want['input']) - 1} inputs, {len(want['output']) - 1} outputs)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
