"""Full mutation testing with cosmic-ray (issue 23 item 1; docs/testing.md).

    pip install -e '.[mutation]'
    python -m tools.mutants.full --list
    python -m tools.mutants.full [--module protocol/crc.py ...] [--out build/mutation]

For each module: a fresh copy of the tree in a temporary folder (cosmic-ray
edits the module file in place: never the working tree), a check that the
copy is what Python imports and that the module's tests pass unmutated, then
`cosmic-ray init` + `cosmic-ray exec` there with the module's own test
selection (MODULES below: the suites that cover it, fastest first, pytest -x).
Prints killed / survived / timed out / incompetent per module and writes
<out>/<module>.txt with every survivor's diff (and <out>/<module>.sqlite, the
cosmic-ray session, for cr-report / cr-html). Long: one module at a time.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from tools.mutants.copytree import check_imports_from, copy_tree, env_for, module_name, ROOT
from tools.mutants.scope import skip_outside

_PYTEST = "python -m pytest -x -q -p no:cacheprovider --no-header -o addopts="

_CODEC = ["tests/mp/test_codec.py", "tests/test_custody_rules.py", "tests/test_reader_edges.py",
          "tests/test_reader_fuzz.py"]
_NO_BROKER = "-k 'not resent_bill'"   # the one custody-rules test that needs Mosquitto

# module -> (pytest arguments), the suites where a bug in it must show.
MODULES = {
    "protocol/crc.py": ["tests/mp/test_codec.py", "tests/test_crc_paths.py",
                        "tests/test_dissector.py::test_crc_agrees_with_crcmod_for_any_bytes",
                        "tests/test_dissector.py::test_both_agree_on_the_official_samples"],
    "protocol/codec.py": _CODEC,
    "protocol/reader.py": ["tests/test_reader_edges.py", "tests/mp/test_codec.py",
                           "tests/test_reader_fuzz.py"],
    "protocol/layout.py": _CODEC,
    "protocol/fields.py": _CODEC,
    "protocol/frames.py": ["tests/test_frame_table_parse.py", "tests/mp/test_codec.py",
                           "tests/test_reader_edges.py",
                           "tests/test_frame_columns.py", "tests/test_layout.py",
                           "tests/test_custody_rules.py", "tests/test_reader_fuzz.py",
                           "tests/test_dissector.py", "tests/test_bridge_custody.py"],
    "protocol/reconcile.py": ["tests/test_reconcile.py", "tests/test_custody_rules.py", _NO_BROKER],
    "firmware/outbox.py": ["tests/test_outbox_rules.py", "tests/mp/test_journal.py", "tests/mp/test_pile.py",
                           "tests/test_custody_rules.py", _NO_BROKER],
    "firmware/journal.py": ["tests/mp/test_journal.py", "tests/test_custody_rules.py",
                            "tests/mp/test_pile.py", "tests/test_journal_powercut.py", _NO_BROKER],
    "firmware/tariff.py": ["tests/mp/test_tariff.py", "tests/mp/test_session.py",
                           "tests/test_pricing_properties.py"],
    "firmware/session.py": ["tests/mp/test_session.py", "tests/test_limit_stop_lag.py",
                            "tests/mp/test_pile.py", "tests/test_pricing_properties.py"],
    "host/schema.py": ["tests/test_bill_document.py", "tests/test_custody_rules.py",
                       "tests/test_reconcile.py", "tests/test_platform.py",
                       "tests/test_bridge_commands.py"],
    "host/platform.py": ["tests/test_platform_confirm.py", "tests/test_platform_mutants.py",
                         "tests/test_custody_rules.py", "tests/test_platform.py"],
    "host/store.py": ["tests/test_custody_rules.py", "tests/test_store_migration.py",
                      "tests/test_bridge.py", "tests/test_bridge_durability.py",
                      "tests/test_store_integrity.py"],
    "host/bridge.py": ["tests/test_custody_rules.py", "tests/test_bridge_confirm.py",
                       "tests/test_bridge.py", "tests/test_bridge_custody.py",
                       "tests/test_bridge_recovery.py", "tests/test_bridge_durability.py",
                       "tests/test_platform.py"],
}

# module -> the functions mutated (tools/mutants/scope.py; docs/testing.md
# "Scope"): in these modules only the part the issue names is custody or
# money. Every other module is mutated whole.
SCOPE = {
    # the session's limit enforcement: each sample, the stop decision, the
    # prediction of the register at the next chance to act
    "firmware/session.py": ["_cdiv", "Gun._sample", "Gun._plan", "Gun._crosses"],
    # the bridge's custody: store before the 0x40, confirm, settle, prune
    "host/bridge.py": ["Bridge.on_bill", "Bridge.on_raw_bill", "Bridge._bill_stored",
                       "Bridge._raw", "Bridge.on_bill_extra", "Bridge._extra_stored",
                       "Bridge.on_confirm", "Bridge._confirm", "Bridge._settle",
                       "Bridge.on_settled_reply", "Bridge.settle_backlog",
                       "Bridge._settle_sweeper"],
    # the platform's confirmation: stored before confirmed, the result, the hash
    "host/platform.py": ["content_hash", "Platform.confirm_result", "Platform._take_message",
                         "Platform._on_message"],
    # the bill document: figures, scales, completeness, the content hash
    "host/schema.py": ["dec", "bill_json", "bill_hash", "undecodable_bill_json"],
}

_CONFIG = """[cosmic-ray]
module-path = "{module}"
timeout = {timeout}
excluded-modules = []
test-command = "{command}"

[cosmic-ray.distributor]
name = "local"
"""


def _cr(args, copy, log):
    r = subprocess.run([sys.executable, "-m", "cosmic_ray.cli"] + args, cwd=copy,
                       env=env_for(copy), stdout=log, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise RuntimeError("cosmic-ray %s failed (exit %d); see %s" % (args[0], r.returncode, log.name))


def _counts(session):
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome
    from cosmic_ray.work_item import WorkerOutcome
    c = {"mutants": 0, "killed": 0, "survived": 0, "timeout": 0, "incompetent": 0, "pending": 0,
         "out_of_scope": 0}
    survivors = []
    with use_db(session, WorkDB.Mode.open) as db:
        total = db.num_work_items
        done = 0
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                c["out_of_scope"] += 1
                continue
            done += 1
            if result.test_outcome == TestOutcome.SURVIVED:
                c["survived"] += 1
                survivors.append((item, result))
            elif result.test_outcome == TestOutcome.KILLED:
                if (result.output or "").strip() == "timeout":
                    c["timeout"] += 1
                else:
                    c["killed"] += 1
            else:
                c["incompetent"] += 1
        c["mutants"] = total - c["out_of_scope"]   # the mutants in scope
        c["pending"] = c["mutants"] - done
    return c, survivors


def run_module(module, out_dir, timeout=None):
    tests = " ".join(MODULES[module])
    base = tempfile.mkdtemp(prefix="pc-cosmic-ray-")
    name = module.replace("/", "_").replace(".py", "")
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.monotonic()
    try:
        copy = copy_tree(os.path.join(base, "tree"))
        check_imports_from(copy, [module_name(module)])
        # The unmutated copy must pass, or every mutant is "killed".
        b0 = time.monotonic()
        r = subprocess.run(_PYTEST.split() + [a for a in _split(tests)], cwd=copy,
                           env=env_for(copy), capture_output=True, text=True)
        base_s = time.monotonic() - b0
        if r.returncode != 0:
            raise RuntimeError("%s: the unmutated tests fail:\n%s" % (module, r.stdout[-3000:]))
        if timeout is None:
            timeout = round(max(30.0, 3 * base_s + 10), 1)
        cfg = os.path.join(copy, "cosmic-ray.toml")
        with open(cfg, "w") as f:
            f.write(_CONFIG.format(module=module, timeout=timeout,
                                   command=(_PYTEST + " " + tests).replace('"', '\\"')))
        session = os.path.join(copy, "session.sqlite")
        with open(os.path.join(out_dir, name + ".log"), "w") as log:
            _cr(["init", cfg, session], copy, log)
            if module in SCOPE:
                kept, skipped = skip_outside(session, os.path.join(copy, module), SCOPE[module])
                log.write("scope %s: %d mutants kept, %d outside skipped\n"
                          % (", ".join(SCOPE[module]), kept, skipped))
                log.flush()
            _cr(["exec", cfg, session], copy, log)
        c, survivors = _counts(session)
        shutil.copy(session, os.path.join(out_dir, name + ".sqlite"))
        c["seconds"] = round(time.monotonic() - t0)
        c["baseline_s"] = round(base_s, 1)
        c["timeout_s"] = timeout
        with open(os.path.join(out_dir, name + ".txt"), "w") as f:
            f.write("%s: %s\n" % (module, c))
            f.write("test command: %s %s\n" % (_PYTEST, tests))
            if module in SCOPE:
                f.write("scope: %s\n" % ", ".join(SCOPE[module]))
            f.write("\n")
            for item, result in survivors:
                for m in item.mutations:
                    f.write("== %s line %d %s #%d\n" % (m.module_path, m.start_pos[0],
                                                        m.operator_name, m.occurrence))
                f.write((result.diff or "") + "\n")
        return c
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _split(s):
    import shlex
    return shlex.split(s)


def score(c):
    judged = c["killed"] + c["timeout"] + c["survived"]
    return 100.0 * (c["killed"] + c["timeout"]) / judged if judged else 0.0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.mutants.full",
                                 description="cosmic-ray over the money and custody modules")
    ap.add_argument("--module", "-m", action="append", help="module path (repeatable); default all")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "mutation"),
                    help="where reports go (default build/mutation)")
    ap.add_argument("--timeout", type=float, help="seconds per mutant (default 3 x baseline + 10)")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args(argv)
    mods = a.module or list(MODULES)
    for m in mods:
        if m not in MODULES:
            ap.error("unknown module %s (see --list)" % m)
    if a.list:
        for m in mods:
            print("%-22s %s" % (m, " ".join(MODULES[m])))
            if m in SCOPE:
                print("%-22s scope: %s" % ("", ", ".join(SCOPE[m])))
        return 0
    print("%-22s %7s %7s %8s %7s %11s %7s %8s" % ("module", "mutants", "killed", "survived",
                                                  "timeout", "incompetent", "score", "time"))
    bad = False
    for m in mods:
        c = run_module(m, a.out, a.timeout)
        print("%-22s %7d %7d %8d %7d %11d %6.1f%% %7ds" % (m, c["mutants"], c["killed"], c["survived"],
                                                          c["timeout"], c["incompetent"], score(c),
                                                          c["seconds"]), flush=True)
        bad = bad or c["survived"] > 0 or c["pending"] > 0
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
