# The full mutation run's scope (tools/mutants/scope.py, docs/testing.md
# "Scope"): in the big modules only the named functions are mutated. These
# prove the filter keeps exactly those functions' lines and fails loudly on a
# name the module no longer defines.
import collections
import os

from tools.mutants import full, scope

_SRC = '''\
import x                      # 1


def top(a):                   # 4
    def inner():              # 5
        return a              # 6
    return inner()            # 7


class Gun:                    # 10
    limit = 3                 # 11

    @staticmethod             # 13
    def _crosses(a):          # 14
        return a > 1          # 15

    async def _plan(self):    # 17
        return 0              # 18

    def other(self):          # 20
        return 1              # 21


def top2():                   # 24
    return 2                  # 25
'''

Item = collections.namedtuple("Item", "job_id mutations")
Mut = collections.namedtuple("Mut", "start_pos")


def test_the_ranges_are_each_def_with_its_decorators_and_nested_code():
    r = scope.line_ranges(_SRC, ["top", "Gun._crosses", "Gun._plan"])
    assert r == {"top": (4, 7), "Gun._crosses": (13, 15), "Gun._plan": (17, 18)}


def test_the_filter_keeps_exactly_the_named_functions_lines():
    ranges = list(scope.line_ranges(_SRC, ["top", "Gun._crosses", "Gun._plan"]).values())
    n = _SRC.count("\n")
    items = [Item("job%d" % line, [Mut((line, 4))]) for line in range(1, n + 1)]
    skipped = set(scope.outside(items, ranges))
    kept = sorted(int(i.job_id[3:]) for i in items if i.job_id not in skipped)
    assert kept == [4, 5, 6, 7, 13, 14, 15, 17, 18]
    # a method of the same name elsewhere, the class body, other methods and
    # functions: all outside
    assert {"job11", "job20", "job21", "job24", "job25", "job1"} <= skipped


def test_an_item_with_any_mutation_outside_is_skipped():
    ranges = [(4, 7)]
    items = [Item("in", [Mut((5, 0)), Mut((7, 2))]), Item("half", [Mut((5, 0)), Mut((8, 0))])]
    assert scope.outside(items, ranges) == ["half"]


def test_a_name_the_module_does_not_define_is_an_error():
    try:
        scope.line_ranges(_SRC, ["top", "Gun.gone", "other"])
    except ValueError as e:
        assert str(e) == "not defined in the module: Gun.gone, other"
    else:
        raise AssertionError("a missing name was accepted")


def test_every_scoped_function_of_the_full_run_exists():
    # A rename in session.py, bridge.py, platform.py or schema.py must fail
    # here, not empty the mutation run's scope.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert set(full.SCOPE) == {"firmware/session.py", "host/bridge.py", "host/platform.py",
                               "host/schema.py"}
    for module, names in full.SCOPE.items():
        with open(os.path.join(root, module)) as f:
            r = scope.line_ranges(f.read(), names)
        assert sorted(r) == sorted(names), module
        assert module in full.MODULES
