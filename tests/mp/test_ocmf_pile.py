# The pile's OCMF half in the running firmware (issue 19 item 6), on both
# interpreters: the key pair made at first boot and kept across restarts,
# shown on the console and sent after login (0xD9); each sealed bill signed
# after its seal, one point operation per poll, its signature (0xDB) sent
# after the bill, which is confirmed as before without waiting for it.
from firmware.console import Console
from sim.loopuart import LoopUart
from protocol import ocmf, p256
from tests.mp.pilekit import Rig, serial
from tests.mp.util import tmpdir


def _entropy(n):
    return bytes(range(7, 7 + n))


def _rig(**kw):
    cfg = {"ocmf_entropy": _entropy}
    cfg.update(kw.pop("cfg", {}))
    return Rig(tmpdir("ocmf"), cfg=cfg, **kw)


def _pub():
    return p256.public_key(p256.keygen(_entropy(32)))


def _hex(b):
    return "".join(["%02X" % x for x in b])


def _session(r, n):
    r.start(serial(n))
    r.run(120000)
    r.stop()
    r.run(5000, lambda: bool(r.platform.named("bill_sig")) and
          r.platform.named("bill_sig")[-1].fields["serial"] == serial(n))


def _verify(bill_frame, sig_frame, pub):
    b = bill_frame.fields
    v = sig_frame.fields
    text = ocmf.payload(b, fw=v["fw"], ids=bool(v["flags"] & 1))
    return p256.verify(pub, text.encode(), int(v["r"], 16), int(v["s"], 16))


def test_the_key_is_made_at_first_boot_kept_across_restarts_and_sent_after_each_login():
    with _rig() as r:
        o = r.pile.ocmf
        assert o.pub is None and o.busy()          # the point is computed in steps
        r.online()
        r.run(2000, lambda: r.pile.ocmf.pub is not None)
        assert o.pub == _pub()
        r.run(1000, lambda: bool(r.platform.named("pile_key")))
        keys = r.platform.named("pile_key")
        assert [f.fields["key"] for f in keys] == [_hex(_pub())]
        assert keys[0].fields["pile"] == r.pile.pile
        assert any(e[1] == "ocmf_key_made" for e in r.pile.events)
        # The key record survives a power cut; nothing is made again.
        r.power_cut()
        assert r.pile.ocmf.pub == _pub() and not r.pile.ocmf.busy()
        assert not any(e[1] == "ocmf_key_made" for e in r.pile.events)
        r.online()
        r.run(1000, lambda: len(r.platform.named("pile_key")) == 2)
        assert r.platform.named("pile_key")[1].fields["key"] == _hex(_pub())


def test_a_cut_before_the_point_was_written_recomputes_it_from_the_kept_scalar():
    with _rig() as r:
        r.run(3)                  # a few steps of the point, not all
        assert r.pile.ocmf.pub is None
        r.cfg["ocmf_entropy"] = lambda n: bytes(n)    # a new scalar would show
        r.power_cut()
        r.online()
        r.run(2000, lambda: r.pile.ocmf.pub is not None)
        assert r.pile.ocmf.pub == _pub()


def test_each_bill_is_confirmed_as_before_and_its_signature_follows_it():
    with _rig() as r:
        r.online()
        _session(r, 1)
        names = [f.name for f in r.platform.frames]
        i = names.index("bill")
        assert names.index("bill_sig") > i
        bill = r.platform.bills()[0]
        sig = r.platform.named("bill_sig")[0]
        assert sig.fields["serial"] == serial(1) and sig.fields["fw"] == r.pile.remote.board_version()
        assert sig.fields["flags"] == 0
        assert _verify(bill, sig, _pub())
        assert r.pile.journal.status(serial(1)) == "settled"
        # The signature is the bill's and only its: another bill's fails.
        _session(r, 2)
        sigs = r.platform.named("bill_sig")
        assert [s.fields["serial"] for s in sigs] == [serial(1), serial(2)]
        assert _verify(r.platform.bills()[1], sigs[1], _pub())
        assert not _verify(r.platform.bills()[0], sigs[1], _pub())


def test_signing_runs_one_step_per_poll_and_the_bill_does_not_wait_for_it():
    with _rig(confirm=False) as r:
        r.online()
        r.run(2000, lambda: not r.pile.ocmf.busy())
        r.start(serial(3))
        r.run(60000)
        steps = r.pile.ocmf.steps
        r.stop()
        r.run(5000, lambda: bool(r.platform.bills()))
        assert not r.platform.named("bill_sig")        # the bill went first, unsigned yet
        assert r.pile.ocmf.busy()
        s0 = r.pile.ocmf.steps
        polls = 0
        while True:
            w = r.pile.poll()
            r.platform.pump()
            polls += 1
            if not r.pile.ocmf.busy():
                break
            assert w == 0                              # poll again at once while signing
        assert r.pile.ocmf.steps - s0 == polls           # one step per poll
        assert r.pile.ocmf.steps - steps == 289            # 288 steps, then the one that ends it
        r.pile.poll()
        r.platform.pump()
        assert [s.fields["serial"] for s in r.platform.named("bill_sig")] == [serial(3)]
        # Unconfirmed, the bill is resent within this login; its signature
        # went once (after a reconnect it goes again: the next test).
        r.run(70000, lambda: len(r.platform.bills()) >= 2)
        assert len(r.platform.bills()) >= 2 and len(r.platform.named("bill_sig")) == 1


def test_a_resent_bill_after_a_reboot_is_signed_again_the_same():
    with _rig(confirm=False) as r:
        r.online()
        _session(r, 4)
        first = r.platform.named("bill_sig")[0].fields
        r.power_cut()
        r.online()
        r.run(5000, lambda: len(r.platform.named("bill_sig")) == 2)
        again = r.platform.named("bill_sig")[1].fields
        assert again == first                          # RFC 6979: the same signature
        assert len(r.platform.bills()) == 2


def test_card_ids_only_when_configured():
    with _rig(cfg={"ocmf_ids": True}) as r:
        r.online()
        _session(r, 5)
        sig = r.platform.named("bill_sig")[0]
        assert sig.fields["flags"] == 1
        assert _verify(r.platform.bills()[0], sig, _pub())


def test_no_entropy_no_key_bills_as_before():
    with _rig(cfg={"ocmf_entropy": lambda n: None}) as r:
        assert r.pile.ocmf.pub is None and not r.pile.ocmf.busy()
        assert any(e[1] == "ocmf_no_key" for e in r.pile.events)
        r.online()
        r.charge(serial(6), 60000, 10000)
        assert len(r.platform.bills()) == 1 and not r.platform.named("bill_sig")
        assert not r.platform.named("pile_key")
        assert r.pile.journal.status(serial(6)) == "settled"


def test_the_console_shows_the_public_key():
    with _rig() as r:
        a, end = LoopUart.pair()
        con = Console(r.pile, a)
        end.read(4096)
        end.write(b"key\r")
        con.poll()
        out = end.read(4096).decode()
        assert "still" not in out and "none" in out     # not made yet
        r.run(2000, lambda: r.pile.ocmf.pub is not None)
        end.write(b"key\r")
        con.poll()
        out = end.read(4096).decode()
        assert _hex(p256.spki_der(_pub())) in out, out
        assert "pile." + r.pile.pile + ".ocmf_key" in out


def test_a_signing_fault_leaves_the_bill_unsigned_and_the_session_untouched():
    with _rig() as r:
        r.online()
        r.run(2000, lambda: not r.pile.ocmf.busy())

        def broken(*a):
            raise OSError("flash")
        r.pile.ocmf._begin = broken           # a job that cannot even start
        _session(r, 7)
        assert r.pile.journal.status(serial(7)) == "settled"
        assert not r.platform.named("bill_sig") and r.pile.loop_faults == 0
        assert any(e[1] == "ocmf_error" for e in r.pile.events)
        assert not r.pile.ocmf.busy()
