"""docs/benchmarks.md as the bench tools write it (`--write`): each tool owns
one "## " section and replaces only that one, or appends it."""
import os

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "benchmarks.md")


def write_section(text, path=DOC):
    """Put `text`, which starts with its heading line ("## Bridge"), in place
    of the section of `path` with that heading (up to the next "## " line),
    or at the end; the other sections stay byte for byte. Written to a side
    file and renamed, so an interrupted run leaves the old document."""
    heading = text.split("\n", 1)[0].rstrip()
    if not heading.startswith("## "):
        raise ValueError("a benchmarks section starts with its '## ' heading, not %r" % heading)
    try:
        with open(path) as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        lines = ["# Benchmarks"]
    new = text.rstrip("\n").split("\n") + [""]
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += [""] + new
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = new
    while len(lines) > 1 and not lines[-1].strip() and not lines[-2].strip():
        lines.pop()
    tmp = "%s.tmp%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")
    os.replace(tmp, path)


def show(text, write, path=DOC):
    """A bench tool's ending: print the figures, and with --write put them in
    the document. Returns the exit status."""
    print(text)
    if write:
        write_section(text, path)
    return 0
