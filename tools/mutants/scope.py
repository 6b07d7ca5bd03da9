"""Scope a cosmic-ray session to named functions (issue 23 item 1;
docs/testing.md, "Scope").

For the big modules where only part is custody or money (the session's limit
enforcement, the bridge's custody, the platform's confirmation, the bill
document), `tools/mutants/full.py` runs this after `cosmic-ray init`: every
work item whose mutation starts outside the named functions is marked
SKIPPED, the way cosmic-ray's own filters (cr-filter-pragma) do, so `exec`
never runs it and the report counts only the scoped mutants.

    python -m tools.mutants.scope SESSION MODULE_FILE NAME [NAME ...]

NAME is a top-level function (`_cdiv`) or a method (`Gun._crosses`); the
range is the whole `def` with its decorators and anything nested in it. A
name that is not in the file is an error, so a rename cannot quietly empty
the scope.
"""
import ast
import sys


def line_ranges(source, names):
    """{name: (first line, last line)} for each name (1-based, inclusive)."""
    tree = ast.parse(source)
    found = {}

    def visit(body, prefix):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                q = prefix + node.name
                if q in names:
                    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                    found[q] = (first, node.end_lineno)
            elif isinstance(node, ast.ClassDef):
                visit(node.body, prefix + node.name + ".")

    visit(tree.body, "")
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError("not defined in the module: %s" % ", ".join(missing))
    return found


def in_scope(line, ranges):
    return any(lo <= line <= hi for lo, hi in ranges)


def outside(items, ranges):
    """The job ids of the work items with a mutation starting outside every
    range (cosmic-ray's start_pos lines are 1-based, as ast's)."""
    return [item.job_id for item in items
            if not all(in_scope(m.start_pos[0], ranges) for m in item.mutations)]


def skip_outside(session, module_file, names):
    """Mark every work item of the session with a mutation outside the named
    functions as skipped. Returns (kept, skipped)."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with open(module_file) as f:
        ranges = list(line_ranges(f.read(), names).values())
    with use_db(session, WorkDB.Mode.open) as db:
        items = list(db.work_items)
        skip = outside(items, ranges)
        kept = len(items) - len(skip)
        if skip:
            db.set_multiple_results(skip, WorkResult(output="outside the scope",
                                                     worker_outcome=WorkerOutcome.SKIPPED))
    return kept, len(skip)


def main(argv=None):
    a = sys.argv[1:] if argv is None else argv
    if len(a) < 3:
        print(__doc__.strip().split("\n\n")[2], file=sys.stderr)
        return 2
    kept, skipped = skip_outside(a[0], a[1], a[2:])
    print("scope: %d work items kept, %d skipped" % (kept, skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
