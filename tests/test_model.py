"""The custody model (model/custody.pml, docs/model.md) under spin.

The unmodified model satisfies every property at the small bounds; each
seeded bug (-D switch, a real mistake) gives a counterexample trail that
ends in the property it breaks. spin runs in a fresh temp folder per check
(tools/model_check.py). spin and gcc come from tools/setup.sh: missing, the
tests fail (they never skip).
"""
import pytest

from tools import model_check as M


@pytest.mark.parametrize("name,flags,kind,claim", M.SMALL, ids=[c[0] for c in M.SMALL])
def test_unmodified_model_satisfies_property(name, flags, kind, claim):
    r = M.run(flags, kind, claim, timeout=120)
    assert r["complete"], r["output"][-2000:]
    assert r["errors"] == 0, (r["failed"], (r["trail"] or "")[-3000:])
    assert r["states"] > 100          # it explored something


# the property each seeded bug must break: the failed assertion's text, or
# an acceptance cycle (a liveness claim)
EXPECTED = {
    "BUG_EVICT_ON_ACK": "assert((pc[0]==1))",         # evicted before the platform stored it
    "BUG_ACK_FIRST": "assert((bs[0]!=0))",            # dropped on the pile, not at the bridge
    "BUG_SERIAL_ONLY": "assert((pc[0]==1))",          # confirmed a bill the platform does not hold
    "BUG_RAM_DEDUP": "assert((pcount[0]==1))",        # two stored bills for one start
    "BUG_ANY_SENDER": "assert((pc[0]==1))",           # confirmed a bill the platform does not hold
    "BUG_OLDEST": "cycle",                            # a pending bill never gets its turn
}


@pytest.mark.parametrize("name,flags,kind,claim", M.BUGS, ids=[b[0] for b in M.BUGS])
def test_seeded_bug_gives_a_counterexample(name, flags, kind, claim):
    r = M.run(flags + ["-D" + name], kind, claim, timeout=120)
    assert r["errors"] and r["errors"] > 0, "%s: no counterexample" % name
    assert r["trail"], "%s: no trail" % name
    if EXPECTED[name] == "cycle":
        assert r["cycle"], r["trail"][-2000:]
    else:
        assert r["failed"] == EXPECTED[name], r["trail"][-2000:]


def test_seeded_bug_switches_are_all_tested():
    # every BUG_ switch in the model has a test, and no test names a switch
    # the model lacks (a renamed switch would check the unmodified model)
    import re
    text = open(M.MODEL).read()
    in_model = set(re.findall(r"#ifdef (BUG_\w+)", text))
    assert in_model == {b[0] for b in M.BUGS} == set(EXPECTED)
