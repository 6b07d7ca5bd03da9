"""The custody model's transition table, generated from model/custody.pml.

The Promela model writes every step as a macro T_<name>(i) = "guard ->
actions" (docs/model.md). This module reads those macros for a chosen set
of -D defines (default: none, the unmodified model), expands the helper
macros, and turns each step into Python: guard and actions over a state
dict of the model's variables. So the chaos replay (tools/model_replay.py)
walks the very steps spin checks: one model.

The replay lifts the model's fault budgets: CAN(c, m) is true and USE(c)
does nothing (a chaos run crashes, loses and duplicates far more often than
the bounds spin explores).

    t = Table()                        # the unmodified model, NB bills
    s = t.initial()
    s2 = t.step(s, "T_P_start", 0)     # None: the guard does not hold
    t.names                            # every T_ step
"""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "model", "custody.pml")

_DEF = re.compile(r"#define\s+(\w+)(\(([^)]*)\))?\s*(.*)$")
_DECL = re.compile(r"^(byte|bool|int|short)\s+(.*);")


class ModelError(Exception):
    pass


def _lines(text):
    # join backslash continuations, drop comments
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"\\\n", " ", text)
    return text.split("\n")


def preprocess(text, defines=()):
    """The lines cpp would keep for these defines, and the macros defined:
    {name: (params or None, body)}. Handles #ifdef/#ifndef/#if defined(..)
    [|| defined(..)], #else, #endif, #define."""
    defined = {}
    for d in defines:
        name, _, val = d.lstrip("-D").partition("=")
        defined[name] = (None, val or "1")
    macros = dict(defined)
    keep = []
    stack = []
    for line in _lines(text):
        s = line.strip()
        active = all(stack)
        if s.startswith("#ifdef") or s.startswith("#ifndef"):
            name = s.split()[1]
            v = name in macros
            stack.append(v if s.startswith("#ifdef") else not v)
        elif s.startswith("#if "):
            names = re.findall(r"defined\((\w+)\)", s)
            if not names or not re.fullmatch(r"#if\s+defined\(\w+\)(\s*\|\|\s*defined\(\w+\))*", s):
                raise ModelError("unsupported #if: " + s)
            stack.append(any(n in macros for n in names))
        elif s.startswith("#else"):
            stack[-1] = not stack[-1]
        elif s.startswith("#endif"):
            stack.pop()
        elif not active:
            continue
        elif s.startswith("#define"):
            m = _DEF.match(s)
            params = [p.strip() for p in m.group(3).split(",")] if m.group(2) else None
            macros[m.group(1)] = (params, m.group(4).strip())
        else:
            keep.append(line)
    if stack:
        raise ModelError("unbalanced #if")
    return keep, macros


def _args(text, start):
    """Arguments of a call whose '(' is at text[start]; (args, end)."""
    depth = 0
    args, cur = [], ""
    for k in range(start, len(text)):
        c = text[k]
        if c == "(":
            depth += 1
            if depth == 1:
                continue
        elif c == ")":
            depth -= 1
            if depth == 0:
                args.append(cur.strip())
                return args, k + 1
        elif c == "," and depth == 1:
            args.append(cur.strip())
            cur = ""
            continue
        cur += c
    raise ModelError("unbalanced parentheses in " + text)


def expand(text, macros, depth=0):
    if depth > 30:
        raise ModelError("macro recursion in " + text)
    out = ""
    k = 0
    changed = False
    for m in re.finditer(r"\b[A-Za-z_]\w*\b", text):
        if m.start() < k:
            continue
        name = m.group(0)
        if name not in macros:
            continue
        params, body = macros[name]
        out += text[k:m.start()]
        if params is None:
            out += body
            k = m.end()
        else:
            j = m.end()
            while j < len(text) and text[j] == " ":
                j += 1
            if j >= len(text) or text[j] != "(":
                out += name
                k = m.end()
                continue
            args, k = _args(text, j)
            b = body
            for p, a in zip(params, args):
                b = re.sub(r"\b%s\b" % re.escape(p), "(%s)" % a if p != "c" else a, b)
            out += b
        changed = True
    out += text[k:]
    return expand(out, macros, depth + 1) if changed else out


def to_python(expr):
    e = expr.replace("&&", " and ").replace("||", " or ")
    e = re.sub(r"!(?!=)", " not ", e)
    return e.strip()


def _action(stmts):
    out = []
    for st in [s.strip() for s in stmts.split(";")]:
        if not st or st == "skip" or st == "(skip)":
            continue
        m = re.fullmatch(r"\(?\s*([\w\[\]() +-]+?)\s*\)?\s*(\+\+|--)", st)
        if m:
            out.append("%s %s= 1" % (m.group(1), "+" if m.group(2) == "++" else "-"))
            continue
        m = re.fullmatch(r"assert\s*(\(.*\))", st)
        if m:
            out.append("_check(%s, %r)" % (to_python(m.group(1)), st))
            continue
        if "=" in st and "==" not in st.split("=", 1)[0] + "=":
            lhs, rhs = st.split("=", 1)
            out.append("%s = %s" % (lhs.strip(), to_python(rhs)))
            continue
        raise ModelError("unsupported statement in a step: %r" % st)
    return "\n".join(out) or "pass"


class PropertyViolated(AssertionError):
    pass


def _check(ok, text):
    if not ok:
        raise PropertyViolated(text)


class Table:
    def __init__(self, defines=(), model=MODEL, replay=True, nb=None):
        text = open(model).read()
        lines, macros = preprocess(text, defines)
        if replay:
            macros["CAN"] = (["c", "m"], "(1)")
            macros["USE"] = (["c"], "skip")
        self.macros = macros
        self.consts = {}
        for name, (params, body) in macros.items():
            if params is None and re.fullmatch(r"-?\d+", body):
                self.consts[name] = int(body)
        if nb is not None:
            self.consts["NB"] = nb
        self.nb = self.consts["NB"]
        self.vars = {}
        for line in lines:
            m = _DECL.match(line.strip())
            if not m:
                continue
            for d in m.group(2).split(","):
                d = d.strip()
                mm = re.fullmatch(r"(\w+)\s*(\[(\w+)\])?\s*(=\s*(-?\d+))?", d)
                if not mm:
                    raise ModelError("declaration: " + d)
                init = int(mm.group(5) or 0)
                if mm.group(2):
                    self.vars[mm.group(1)] = [init] * int(mm.group(3))
                else:
                    self.vars[mm.group(1)] = init
        self.order = sorted(self.vars)
        self.steps = {}
        for name, (params, body) in macros.items():
            if not name.startswith("T_"):
                continue
            body = expand(body, {k: v for k, v in macros.items() if not k.startswith("T_")})
            guard, sep, acts = body.partition("->")
            if not sep:
                raise ModelError("%s: no '->'" % name)
            g = compile(to_python(guard), name + " guard", "eval")
            a = compile(_action(acts), name + " action", "exec")
            self.steps[name] = (g, a, params is not None and "i" in body)
        self.names = sorted(self.steps)
        # the steps of the do-loop, as the model lists them (STEPS / ONCE)
        body = "\n".join(lines)
        self.listed = re.findall(r"\b(?:STEPS|ONCE)\((T_\w+)\)", body)
        self.once = set(re.findall(r"\bONCE\((T_\w+)\)", body))
        missing = [n for n in self.listed if n not in self.steps]
        if missing:
            raise ModelError("listed but not defined: %s" % missing)

    def initial(self):
        return self.freeze(self.vars)

    def freeze(self, d):
        return tuple(tuple(d[k]) if isinstance(d[k], list) else d[k] for k in self.order)

    def thaw(self, state):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in zip(self.order, state)}

    def graph(self, limit=500000):
        """Every state reachable from the initial one: {state: [(name, i, next)]}."""
        init = self.initial()
        g = {}
        todo = [init]
        while todo:
            s = todo.pop()
            if s in g:
                continue
            if len(g) >= limit:
                raise ModelError("more than %d states" % limit)
            g[s] = out = list(self.enabled(s))
            todo.extend(n for _, _, n in out if n not in g)
        return g

    def indices(self, name):
        return (0,) if name in self.once else range(self.nb)

    def step(self, state, name, i):
        """The state after step `name` for bill i, or None when its guard
        does not hold. A failed assertion raises PropertyViolated."""
        g, a, _ = self.steps[name]
        env = dict(self.consts)
        env.update(self.thaw(state))
        env["i"] = i
        env["_check"] = _check
        if not eval(g, {}, env):
            return None
        exec(a, {}, env)
        return self.freeze(env)

    def enabled(self, state, names=None):
        base = dict(self.consts)
        base.update(self.thaw(state))
        base["_check"] = _check
        for n in names or self.listed:
            g, a, _ = self.steps[n]
            for i in self.indices(n):
                base["i"] = i
                if not eval(g, {}, base):
                    continue
                env = dict(base)
                for k, v in env.items():
                    if isinstance(v, list):
                        env[k] = list(v)
                exec(a, {}, env)
                yield n, i, self.freeze(env)
