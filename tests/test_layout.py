# The layout keeps its shape (issue 18): host/ imports nothing from
# firmware/ (what both ends share lives in protocol/), and a bill is
# reconciled in one place only. Parsed with ast, never imported.
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("protocol", "firmware", "host", "sim", "tools")
TOTALS = {"total_energy", "total_loss", "total_amount"}
RECONCILIATION = ("protocol", "reconcile.py")


def sources(*packages):
    for pkg in packages:
        for dirpath, _dirs, files in os.walk(os.path.join(ROOT, pkg)):
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    with open(path, encoding="utf-8") as f:
                        yield os.path.relpath(path, ROOT), ast.parse(f.read(), path)


def imported_modules(tree):
    """Every module an import statement names, at any depth (lazy imports
    inside functions count as much as the ones at the top)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            for a in node.names:     # "from firmware import auth"
                yield node.lineno, node.module + "." + a.name


def test_host_imports_nothing_from_firmware():
    found = ["%s:%d imports %s" % (path, line, mod)
             for path, tree in sources("host")
             for line, mod in imported_modules(tree)
             if mod == "firmware" or mod.startswith("firmware.")]
    assert found == [], "host/ must take shared facts from protocol/:\n" + "\n".join(found)


def test_protocol_imports_only_protocol():
    # protocol/ is the bottom layer: both ends build on it, it builds on neither.
    found = ["%s:%d imports %s" % (path, line, mod)
             for path, tree in sources("protocol")
             for line, mod in imported_modules(tree)
             if mod.split(".")[0] in PACKAGES and mod.split(".")[0] != "protocol"]
    assert found == [], "\n".join(found)


def _mentions_total(node, bound):
    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and n.value in TOTALS:
            return True
        if isinstance(n, ast.Name) and n.id in bound:
            return True
    return False


def _bound_to_totals(fn):
    """Names a function binds from an expression that names a total
    (t = bill["total_energy"]; for what, total in (("energy", "total_energy"), ...))."""
    bound = set()
    for n in ast.walk(fn):
        if isinstance(n, ast.Assign):
            targets, value = n.targets, n.value
        elif isinstance(n, (ast.For, ast.comprehension)):
            targets, value = [n.target], n.iter
        else:
            continue
        if _mentions_total(value, ()):
            for t in targets:
                bound |= {x.id for x in ast.walk(t) if isinstance(x, ast.Name)}
    return bound


def _sums(fn):
    """sum(...), a += in a loop, or a call to a helper named like a sum."""
    for n in ast.walk(fn):
        if isinstance(n, ast.Call):
            f = n.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if "sum" in name.lower():
                return True
        if isinstance(n, ast.AugAssign) and isinstance(n.op, ast.Add):
            return True
    return False


def is_reconciliation(fn):
    """A function that adds up figures and compares something with a bill
    total (==, !=): a reconciliation, best effort."""
    if not _sums(fn):
        return False
    bound = _bound_to_totals(fn)
    for c in ast.walk(fn):
        if isinstance(c, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in c.ops):
            if any(_mentions_total(x, bound) for x in [c.left] + c.comparators):
                return True
    return False


def reconciliations(*packages):
    out = []
    for path, tree in sources(*packages):
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and is_reconciliation(fn):
                out.append("%s:%s" % (path, fn.name))
    return out


def test_a_bill_is_reconciled_in_one_place():
    found = reconciliations(*PACKAGES)
    assert found == ["protocol/reconcile.py:reconcile"], \
        "a second reconciliation: call protocol/reconcile.py instead\n" + "\n".join(found)


def test_the_reconciliation_check_finds_the_old_copies():
    # The check above must be able to fail: the three copies it replaced,
    # in the shapes they had, are each found.
    copies = (
        "def check_bill(fields):\n"
        "    problems = []\n"
        "    for what, total in (('energy', 'total_energy'), ('amount', 'total_amount')):\n"
        "        s = sum(fields[p + '_' + what] for p in PERIODS)\n"
        "        if s != fields[total]:\n"
        "            problems.append(what)\n"
        "    return problems\n",
        "def reconcile(raw):\n"
        "    e = sum(raw[p + '_energy'] for p in periods)\n"
        "    return e != raw['total_energy']\n",
        "def reconcile(b):\n"
        "    fees = 0\n"
        "    for c in CLASSES:\n"
        "        fees += b[c + '_energy_fee'] + b[c + '_service_fee']\n"
        "    return {'fees_eq_total': fees == b['total_amount']}\n",
    )
    for src in copies:
        assert is_reconciliation(ast.parse(src).body[0]), src
    builder = ast.parse(
        "def make_bill(v):\n"
        "    for i, p in enumerate(PERIODS):\n"
        "        e = 1 if i == 0 else 2\n"
        "        v['total_amount'] += e\n")
    assert not is_reconciliation(builder.body[0])
