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


# --- doubles in sim/, thin tools (issue 18 items 3 and 4) ----------------------------------

# Tools over the line limit, each with the reason it is still there.
TOOL_MAX_LINES = 300
TOOLS_OVER_LIMIT = {
    "gen_protocol_doc.py": "its TITLES/NOTES tables are the generated document's text (about "
                           "400 lines of data), edited by the frame work on other branches; "
                           "they belong with the frame table in protocol/ (issue 18 item 1)",
}
# A tool importing another tool, each with the reason.
TOOL_IMPORTS_ALLOWED = {
    ("bench_ocpp.py", "tools.ocpp_csms"): "the CSMS double is the OCPP work's tool file; it moves "
                                          "to sim/ with its owner",
}
# Library modules (protocol/, firmware/, host/, sim/) that import a tool.
LIBRARY_TOOL_IMPORTS_ALLOWED = {
    ("sim/demo.py", "tools.ocpp_csms"): "the same CSMS double, for pile-demo --ocpp",
}
# host/ modules that import a double from sim/ (a documented test hook): none.
HOST_SIM_IMPORTS_ALLOWED = {}


def tool_sources(root=ROOT):
    """(name, line count, tree) of every tools/*.py (tools/mutants/ is one
    tool made of a package and is not a module of tools/)."""
    d = os.path.join(root, "tools")
    for name in sorted(os.listdir(d)):
        if name.endswith(".py") and name != "__init__.py":
            with open(os.path.join(d, name), encoding="utf-8") as f:
                text = f.read()
            yield name, text.count("\n") + (0 if text.endswith("\n") or not text else 1), \
                ast.parse(text, name)


def tools_over_limit(root=ROOT, allowed=TOOLS_OVER_LIMIT):
    return ["tools/%s: %d lines" % (name, n) for name, n, _ in tool_sources(root)
            if n > TOOL_MAX_LINES and name not in allowed]


def tools_importing_tools(root=ROOT, allowed=TOOL_IMPORTS_ALLOWED):
    """Imports of another tools module: tools.X, `from tools import X`, or a
    bare sibling name after a sys.path change (`import board_test`)."""
    names = {name[:-3] for name, _, _ in tool_sources(root)}
    found = []
    for name, _, tree in tool_sources(root):
        for line, mod in imported_modules(tree):
            parts = mod.split(".")
            if parts[0] == "tools" and len(parts) > 1 and parts[1] in names:
                target = "tools." + parts[1]
            elif parts[0] in names and parts[0] not in PACKAGES:   # tools/sim.py vs sim/
                target = "tools." + parts[0]
            else:
                continue
            if target != "tools." + name[:-3] and (name, target) not in allowed:
                found.append("tools/%s:%d imports %s" % (name, line, target))
    return sorted(set(found))


def _imports_of(packages, prefix, root=ROOT):
    """(path, line, module) of each import of `prefix` or below in packages."""
    import glob
    paths = sorted(p for pkg in packages
                   for p in glob.glob(os.path.join(root, pkg, "**", "*.py"), recursive=True))
    out = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            imports = imported_modules(ast.parse(f.read(), path))
        out += [(os.path.relpath(path, root), line, mod) for line, mod in imports
                if mod == prefix or mod.startswith(prefix + ".")]
    return out


def host_importing_doubles(root=ROOT, allowed=HOST_SIM_IMPORTS_ALLOWED):
    found = set()
    for p, line, mod in _imports_of(("host",), "sim", root):
        target = ".".join(mod.split(".")[:2])
        if (p, target) not in allowed:
            found.add("%s:%d imports %s" % (p, line, target))
    return sorted(found)


def libraries_importing_tools(root=ROOT, allowed=LIBRARY_TOOL_IMPORTS_ALLOWED):
    found = set()
    for p, line, mod in _imports_of(("protocol", "firmware", "host", "sim"), "tools", root):
        target = ".".join(mod.split(".")[:2])
        if target != "tools" and (p, target) not in allowed:
            found.add("%s:%d imports %s" % (p, line, target))
    return sorted(found)


def test_host_holds_no_double():
    # The gateway and the reference platform never reach for a double: the
    # test kit, brokers, links and simulated hardware live in sim/.
    assert host_importing_doubles() == []
    for name in ("testkit.py", "broker.py"):
        assert not os.path.exists(os.path.join(ROOT, "host", name)), "host/%s is a double" % name
    for name in ("sim.py", "flashsim.py", "loopuart.py"):
        assert not os.path.exists(os.path.join(ROOT, "firmware", name)), "firmware/%s is a double" % name


def test_tools_are_thin_front_ends():
    assert tools_over_limit() == [], "move the library part to sim/ or host/"
    # the named exceptions are still over the limit (else drop them from the list)
    sizes = {name: n for name, n, _ in tool_sources()}
    assert all(sizes.get(name, 0) > TOOL_MAX_LINES for name in TOOLS_OVER_LIMIT), sizes


def test_no_tool_imports_another_tool():
    assert tools_importing_tools() == []
    assert libraries_importing_tools() == []


def test_the_layout_checks_find_planted_violations(tmp_path):
    # Each check above, on a copy of the layout with one violation planted.
    root = str(tmp_path)
    for pkg in ("tools", "host", "sim", "protocol", "firmware"):
        os.makedirs(os.path.join(root, pkg))
        open(os.path.join(root, pkg, "__init__.py"), "w").close()

    def put(path, text):
        with open(os.path.join(root, path), "w") as f:
            f.write(text)
    put("tools/good.py", "import argparse\nfrom sim import fleet\n\n\ndef main():\n    pass\n")
    put("tools/other.py", "x = 1\n")
    put("host/bridge.py", "from protocol import codec\n")
    put("sim/fleet.py", "from host import cli\n")
    assert tools_over_limit(root) == [] and tools_importing_tools(root) == []
    assert host_importing_doubles(root) == [] and libraries_importing_tools(root) == []

    put("tools/fat.py", "x = 1\n" * (TOOL_MAX_LINES + 1))
    assert tools_over_limit(root) == ["tools/fat.py: 301 lines"]
    for text in ("from tools.other import x\n", "from tools import other\n",
                 "import tools.other\n", "def f():\n    import other\n"):
        put("tools/good.py", text)
        assert tools_importing_tools(root) == ["tools/good.py:%d imports tools.other"
                                               % (2 if text.startswith("def") else 1)], text
    put("host/bridge.py", "def hook():\n    from sim.testkit import ScriptedPile\n")
    assert host_importing_doubles(root) == ["host/bridge.py:2 imports sim.testkit"]
    put("sim/fleet.py", "from tools import other\n")
    assert libraries_importing_tools(root) == ["sim/fleet.py:1 imports tools.other"]


# --- no import cycle ----------------------------------------------------------

# Cycles kept on purpose, each closed by an import at the end of a module or
# behind a guard, so that either side loads first: (modules, why).
KNOWN_CYCLES = (
    ({"protocol.codec", "protocol.reader"},
     "codec re-exports FrameReader from its last line; reader was split from it to keep "
     "each module's compile-time heap peak small on a board that imports .py files"),
    ({"protocol.crc", "protocol.crc_viper"},
     "crc takes the viper CRC only where the emitter exists (inside a try); the viper "
     "module reads crc's table"),
)


def module_name(path):
    m = path[:-3].replace(os.sep, ".").replace("/", ".")
    return m[:-len(".__init__")] if m.endswith(".__init__") else m


def load_time_imports(tree):
    """The modules a module imports while it loads: statements at module
    level, also inside if/try there. An import inside a function runs when
    the function does, which is how a cycle is broken, so it is not one."""
    out = []

    def walk(body):
        for n in body:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(n, ast.Import):
                out.extend(a.name for a in n.names)
            elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
                out.append(n.module)
                out.extend(n.module + "." + a.name for a in n.names)
            for part in ("body", "orelse", "finalbody", "handlers"):
                sub = getattr(n, part, None)
                if isinstance(sub, list) and sub and isinstance(sub[0], ast.AST):
                    walk(sub)
    walk(tree.body)
    return out


def import_cycles(modules):
    """modules: {name: ast tree}. Every set of two or more modules that
    import each other, directly or round a loop, at load time (Tarjan)."""
    graph = {}
    for m, tree in modules.items():
        graph[m] = sorted({x for x in load_time_imports(tree) if x in modules and x != m})
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_the_project_modules():
    modules = {module_name(path): tree for path, tree in sources(*PACKAGES)}
    known = [c for c, _why in KNOWN_CYCLES]
    found = [sorted(c) for c in import_cycles(modules) if c not in known]
    assert found == [], "modules that import each other while loading:\n%s" % found


def test_the_cycle_check_finds_a_planted_cycle():
    planted = {
        "host.a": ast.parse("from host import b\n"),
        "host.b": ast.parse("import host.c\n"),
        "host.c": ast.parse("try:\n    from host.a import x\nexcept ImportError:\n    pass\n"),
        "host.d": ast.parse("def f():\n    import host.e\n"),       # lazy: not a cycle
        "host.e": ast.parse("import host.d\n"),
    }
    assert import_cycles(planted) == [{"host.a", "host.b", "host.c"}]


# --- no frame-code if/elif chains --------------------------------------------

def _frame_facts():
    from protocol.frames import lines
    codes, names = set(), set()
    for code, name, _spec in lines():
        codes.add(code)
        names.add(name)
    return codes, names


def _frame_subject(test, codes, names, aliases=()):
    """The expression an `if` test compares with frame codes or names
    (`f.code == 0x36`, `c in (0x0A, 0x58)`, `f.name == "bill"`, or several
    of them joined by `or`), as source text; None for any other test."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.Or):
        subs = {_frame_subject(v, codes, names, aliases) for v in test.values}
        return subs.pop() if len(subs) == 1 else None
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1
            and isinstance(test.ops[0], (ast.Eq, ast.In))):
        return None
    right = test.comparators[0]
    consts = right.elts if isinstance(right, (ast.Tuple, ast.List, ast.Set)) else [right]
    if not consts or not all(isinstance(c, ast.Constant) for c in consts):
        return None
    values = [c.value for c in consts]
    is_code = all(type(v) is int and v in codes for v in values)
    is_name = all(isinstance(v, str) and v in names for v in values)
    if not (is_code or is_name):
        return None
    subject = ast.unparse(test.left)
    last = subject.rsplit(".", 1)[-1]
    if last in ("c", "code", "name", "kind", "type") or last.endswith(("_code", "_name")) \
            or subject in aliases:
        return subject
    return None


def _aliases(tree):
    """Names bound to a frame's code or name (`n = f.name`), anywhere in
    the module: a chain over them is a chain over the frame."""
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Assign) and len(n.targets) == 1 \
                and isinstance(n.targets[0], ast.Name) and isinstance(n.value, ast.Attribute) \
                and n.value.attr in ("code", "name"):
            out.add(n.targets[0].id)
    return out


def frame_chains(tree, codes, names, limit=2):
    """(line, subject, n) for every if/elif chain that compares one frame
    code or name expression with constants more than `limit` times."""
    out = []
    elifs = set()
    aliases = _aliases(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.If) or id(node) in elifs:
            continue
        subject, n, cur = None, 0, node
        while True:
            s = _frame_subject(cur.test, codes, names, aliases)
            if s is not None and (subject is None or s == subject):
                subject = s
                n += 1
            if len(cur.orelse) == 1 and isinstance(cur.orelse[0], ast.If):
                cur = cur.orelse[0]
                elifs.add(id(cur))
            else:
                break
        if n > limit:
            out.append((node.lineno, subject, n))
    return out


# Chains left in doubles, each with the reason it is not a router's job yet:
# path -> why.
KNOWN_CHAINS = {}   # none left: sim/platform.py and sim/scenario.py route too


def test_no_frame_code_if_chains_in_firmware_host_and_sim():
    # A frame's behaviour is one handler, registered with protocol/router.py
    # (firmware/handlers.py, host/piles.py, sim/testkit.py HANDLERS), never
    # another elif.
    codes, names = _frame_facts()
    found = ["%s:%d: %d comparisons of %s" % (path, line, n, subject)
             for path, tree in sources("firmware", "host", "sim") if path not in KNOWN_CHAINS
             for line, subject, n in frame_chains(tree, codes, names)]
    assert found == [], "dispatch frames through protocol/router.py:\n" + "\n".join(found)


def test_the_chain_check_finds_a_planted_dispatch():
    codes, names = _frame_facts()
    planted = (
        # (source, what the check must find)
        ("def dispatch(self, f):\n    c = f.code\n"
         "    if c == 0x36:\n        stop()\n"
         "    elif c == 0x34 or c == 0xE2:\n        start()\n"
         "    elif c in (0x0A, 0x58):\n        tariff()\n", [(3, "c", 3)]),
        ("if f.name == 'login':\n    a()\nelif f.name == 'heartbeat':\n    b()\n"
         "elif f.name in ('bill', 'bill5'):\n    c()\nelse:\n    d()\n", [(1, "f.name", 3)]),
        # two comparisons, or a chain over something that is not a frame, pass
        ("if f.code == 0x02:\n    a()\nelif f.code == 0x04:\n    b()\n", []),
        ("if op == 1:\n    a()\nelif op == 2:\n    b()\nelif op == 3:\n    c()\n", []),
        # a local name for the frame's name is the frame's name
        ("def answer(f):\n    n = f.name\n    if n == 'login':\n        a()\n"
         "    elif n == 'heartbeat':\n        b()\n    elif n == 'tariff_check':\n        c()\n",
         [(3, "n", 3)]),
        ("def answer(f):\n    cmd = f.text\n    if cmd == 'reboot':\n        a()\n"
         "    elif cmd == 'login':\n        b()\n    elif cmd == 'bill':\n        c()\n", []),
    )
    for src, found in planted:
        assert frame_chains(ast.parse(src), codes, names) == found, src


# --- module size limits -------------------------------------------------------

# Lines per module, by package; a module past its package's limit is listed
# below with its own limit and the reason it is larger.
SIZE_LIMITS = {"protocol": 400, "firmware": 800, "host": 800, "sim": 800, "tools": 800}
LARGE_MODULES = {
    "firmware/journal.py": (1100, "the journal's record format, recovery, compaction and "
                                  "serial memory share one on-flash format (docs/journal.md)"),
    "firmware/session.py": (950, "the gun's state machine with its pricing and checkpoint "
                                 "hooks; its parts share the session state"),
    "host/bridge.py": (1300, "the bridge's custody path (store, publish, confirm, settle) "
                             "and its uplinks' wiring"),
    "host/store.py": (1150, "the SQLite store with its seven migrations (docs/bridge.md)"),
    "host/platform.py": (1000, "the reference platform: bills, confirmations, settlement "
                               "and its lease"),
    "tools/sim.py": (1750, "the simulator's library part; moving to sim/ (issue 18 item 4)"),
    "tools/fuzz.py": (1850, "the fuzz generators; moving to sim/ (issue 18 item 4)"),
    "tools/chaos.py": (1450, "the chaos driver; moving to sim/ (issue 18 item 4)"),
}


def oversized(sizes):
    """sizes: {path: lines}. The modules past their limit, as messages."""
    out = []
    for path, n in sorted(sizes.items()):
        limit = LARGE_MODULES.get(path, (SIZE_LIMITS[path.split("/")[0]], ""))[0]
        if n > limit:
            out.append("%s: %d lines, limit %d" % (path, n, limit))
    return out


def module_sizes(*packages):
    sizes = {}
    for pkg in packages:
        for dirpath, _dirs, files in os.walk(os.path.join(ROOT, pkg)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    with open(path, encoding="utf-8") as f:
                        sizes[os.path.relpath(path, ROOT).replace(os.sep, "/")] = \
                            sum(1 for _ in f)
    return sizes


def test_modules_stay_within_their_size_limits():
    assert oversized(module_sizes(*PACKAGES)) == [], \
        "split the module, or list it in LARGE_MODULES with a reason"


def test_the_size_check_finds_a_planted_large_module():
    assert oversized({"protocol/new.py": 401, "firmware/journal.py": 1100}) == \
        ["protocol/new.py: 401 lines, limit 400"]
    assert oversized({"firmware/journal.py": 1101}) == \
        ["firmware/journal.py: 1101 lines, limit 1100"]


# --- the board's manifest lists what firmware/ holds -------------------------

MANIFEST = os.path.join("firmware", "board", "manifest.py")
# In firmware/ but never flashed: main.py is copied to a board as editable
# source (README "A real board"); the rest is simulation, on its way to sim/
# (issue 18 item 3), and may already be gone.
NOT_FLASHED = {"main.py", "sim.py", "flashsim.py", "loopuart.py"}


def manifest_files(text):
    """The files of the `firmware` package() call in a manifest's source."""
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "package" \
                and node.args and getattr(node.args[0], "value", None) == "firmware":
            for kw in node.keywords:
                if kw.arg == "files":
                    return sorted(e.value for e in kw.value.elts)
    return None


def manifest_problems(listed, present):
    """What differs between the manifest's firmware files and firmware/."""
    want = sorted(set(present) - NOT_FLASHED)
    out = ["%s is in firmware/ but not in the manifest" % n for n in want if n not in listed]
    out += ["%s is in the manifest but not in firmware/" % n for n in listed if n not in present]
    out += ["%s is simulation / source only and must not be flashed" % n
            for n in listed if n in NOT_FLASHED]
    return out


def test_the_manifest_lists_every_firmware_module_but_the_simulation():
    with open(os.path.join(ROOT, MANIFEST), encoding="utf-8") as f:
        listed = manifest_files(f.read())
    assert listed, "no package('firmware', files=...) in " + MANIFEST
    present = [n for n in os.listdir(os.path.join(ROOT, "firmware")) if n.endswith(".py")]
    assert manifest_problems(listed, present) == []


def test_the_manifest_check_finds_a_missing_an_extra_and_a_simulated_module():
    listed = manifest_files('package("firmware", files=("__init__.py", "pile.py", "gone.py", '
                            '"sim.py"), base_path="../..")\npackage("protocol")\n')
    assert listed == ["__init__.py", "gone.py", "pile.py", "sim.py"]
    present = ["__init__.py", "pile.py", "handlers.py", "sim.py", "main.py"]
    assert manifest_problems(listed, present) == [
        "handlers.py is in firmware/ but not in the manifest",
        "gone.py is in the manifest but not in firmware/",
        "sim.py is simulation / source only and must not be flashed"]


def test_no_frame_code_if_chains_in_tools():
    # The tools are front ends: a frame's behaviour is never decided there
    # (the chain check above, over tools/).
    codes, names = _frame_facts()
    found = ["%s:%d: %d comparisons of %s" % (path, line, n, subject)
             for path, tree in sources("tools")
             for line, subject, n in frame_chains(tree, codes, names)]
    assert found == [], "dispatch frames through protocol/router.py:\n" + "\n".join(found)


# --- installed as one name: pile_companion (setup.cfg) -------------------------

INSTALLED = "pile_companion"


def install_problems(cfg_text, package_dirs):
    """What in a setup.cfg would install a name other than pile_companion
    or leave one of our packages out of it. package_dirs: every folder of
    the five packages holding an __init__.py ('tools/mutants')."""
    import configparser
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read_string(cfg_text)
    opts = cfg["options"] if cfg.has_section("options") else {}
    packages = [p for p in opts.get("packages", "").split() if not p.startswith("find")]
    mapped = dict(line.replace(" ", "").split("=", 1)
                  for line in opts.get("package_dir", "").splitlines() if "=" in line)
    out = []
    if opts.get("packages", "").strip().startswith("find"):
        out.append("packages = %s (list each under %s)" % (opts["packages"].strip(), INSTALLED))
    out += ["package %s installs the top-level name %s" % (p, p.split(".")[0])
            for p in packages if p.split(".")[0] != INSTALLED]
    out += ["package_dir maps %s, outside %s" % (k, INSTALLED)
            for k in mapped if k.split(".")[0] != INSTALLED]
    for d in package_dirs:
        name = INSTALLED + "." + d.replace("/", ".")
        if name not in packages:
            out.append("%s/ is not installed (add %s to packages)" % (d, name))
    for top in PACKAGES:
        if mapped.get(INSTALLED + "." + top) != top:
            out.append("package_dir does not map %s.%s to %s/" % (INSTALLED, top, top))
    scripts = cfg.get("options.entry_points", "console_scripts", fallback="")
    out += ["console script %s does not start in %s" % (line.strip(), INSTALLED)
            for line in scripts.splitlines()
            if "=" in line and not line.split("=", 1)[1].strip().startswith(INSTALLED + ".")]
    return out


def test_setup_cfg_installs_one_top_level_name():
    # A wheel must not put `host`, `tools` or `protocol` into site-packages
    # (tests/test_install.py builds one and looks).
    dirs = [os.path.relpath(d, ROOT) for top in PACKAGES
            for d, _sub, files in os.walk(os.path.join(ROOT, top)) if "__init__.py" in files]
    with open(os.path.join(ROOT, "setup.cfg"), encoding="utf-8") as f:
        assert install_problems(f.read(), dirs) == []


def test_the_install_check_finds_yesterdays_setup_cfg():
    old = ("[options]\npackages = find:\n[options.packages.find]\n"
           "include = protocol*, firmware*, host*, sim*, tools*\n"
           "[options.entry_points]\nconsole_scripts =\n    pile-bridge = host.bridge:main\n")
    assert install_problems(old, ["host"]) == [
        "packages = find: (list each under pile_companion)",
        "host/ is not installed (add pile_companion.host to packages)"] + [
        "package_dir does not map pile_companion.%s to %s/" % (p, p) for p in PACKAGES] + [
        "console script pile-bridge = host.bridge:main does not start in pile_companion"]
    listed = ("[options]\npackages =\n    pile_companion\n    host\n"
              "package_dir =\n    pile_companion.host = host\n    tools = tools\n")
    assert install_problems(listed, ["host", "tools/mutants"])[:4] == [
        "package host installs the top-level name host",
        "package_dir maps tools, outside pile_companion",
        "host/ is not installed (add pile_companion.host to packages)",
        "tools/mutants/ is not installed (add pile_companion.tools.mutants to packages)"]
