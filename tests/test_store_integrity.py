# Store integrity (issue 17 item 5): one bridge per store, a store checked
# before it is used, and a database deleted or replaced underneath a running
# bridge stops acknowledgements instead of taking bills into a lost file.
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from host import store as S
from sim.testkit import make_bill
from protocol import codec
from tests.test_bridge_helpers import (
    PILE_A, ROOT, bridge_running, connect_pile, fast_config, in_tempdir, run, tempdir, url_of,
    write_toml)


@pytest.fixture
def tmp():
    d = tempfile.mkdtemp(prefix="pc-store-int-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _bill(n):
    v = make_bill(PILE_A, n)
    return v["serial"], codec.encode("bill", v, n)


def test_a_second_store_on_the_same_file_is_refused_naming_the_first(tmp):
    path = os.path.join(tmp, "bridge.db")
    first = S.Store(path)
    try:
        with pytest.raises(S.StoreError) as e:
            S.Store(path)
        assert "in use by another bridge (pid %d" % os.getpid() in str(e.value)
    finally:
        first.close()
    S.Store(path).close()            # free again once the first is closed


def test_a_second_bridge_process_on_the_same_store_exits_with_a_clear_error(tmp):
    cfg = fast_config(tmp, "mqtt://127.0.0.1:1")
    path = write_toml(os.path.join(tmp, "b.toml"), cfg)
    held = S.Store(cfg["database"])
    try:
        p = subprocess.run([sys.executable, "-m", "host.bridge", "-c", path], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    finally:
        held.close()
    assert p.returncode == 2, p.stderr
    assert "in use by another bridge" in p.stderr and "Traceback" not in p.stderr


def test_a_corrupted_database_is_refused_at_start(tmp):
    path = os.path.join(tmp, "bridge.db")
    st = S.Store(path)
    try:
        async def fill():
            for n in range(200):
                await st.add_bill(PILE_A, *_bill(n))
        asyncio.run(fill())
    finally:
        st.close()
    for f in (path + "-wal", path + "-shm"):
        if os.path.exists(f):
            os.remove(f)
    with open(path, "r+b") as f:           # scribble over pages past the header
        f.seek(4096 * 3)
        f.write(b"\xA5" * 4096 * 4)
    with pytest.raises(S.StoreError) as e:
        S.Store(path)
    msg = str(e.value)
    assert "integrity check" in msg or "malformed" in msg or "not a database" in msg, msg


def test_a_database_deleted_underneath_a_running_bridge_stops_the_0x40s(mosquitto):
    async def scenario(tmp):
        cfg = fast_config(tmp, url_of(mosquitto))
        async with bridge_running(cfg) as b:
            pile = await connect_pile(PILE_A, b.tcp_port, reply_timeout=2.0)
            assert await pile.send_bill(make_bill(PILE_A, 1)) == 0
            for f in (cfg["database"], cfg["database"] + "-wal", cfg["database"] + "-shm"):
                if os.path.exists(f):
                    os.remove(f)
            # Custody cannot pass to a file that is gone: no 0x40, the pile keeps it.
            with pytest.raises(asyncio.TimeoutError):
                await pile.send_bill(make_bill(PILE_A, 2))
            assert "deleted or replaced" in (b.store.unsound or "")
            await pile.close()
    in_tempdir("deleted", scenario)


def test_a_store_is_bound_to_its_site_and_moves_only_by_migrate_site(mosquitto):
    # Issue 17: a restart with another site id republished the old bills
    # under it. The store is bound to its site at the first start; another
    # site is refused by name until 'pile-bridge migrate-site --from OLD'.
    from sim.testkit import make_extra
    from tests.test_bridge_helpers import Platform

    async def scenario(tmp):
        cfg = fast_config(tmp, url_of(mosquitto), site="old-site")
        async with bridge_running(cfg) as b:
            pile = await connect_pile(PILE_A, b.tcp_port)
            bill = make_bill(PILE_A, 1)
            assert await pile.send_bill(bill, make_extra(bill)) == 0     # unconfirmed: no platform
            await pile.close()
        renamed = dict(cfg, site="new-site")
        try:
            async with bridge_running(renamed):
                raise AssertionError("a bridge of another site started on this store")
        except S.StoreError as e:
            assert "belongs to site 'old-site'" in str(e) and "migrate-site" in str(e)
        path = write_toml(os.path.join(tmp, "new.toml"), renamed)
        p = subprocess.run([sys.executable, "-m", "host.bridge", "migrate-site", "-c", path,
                            "--from", "wrong-site"], cwd=ROOT, capture_output=True, text=True)
        assert p.returncode == 1 and "nothing changed" in p.stderr
        p = subprocess.run([sys.executable, "-m", "host.bridge", "migrate-site", "-c", path,
                            "--from", "old-site"], cwd=ROOT, capture_output=True, text=True)
        assert p.returncode == 0 and "1 unconfirmed bill(s) will be published under new-site" in p.stdout
        # The platform subscribes first: a bill the bridge publishes at start
        # before anyone listens waits for the next retry (seconds, under load
        # longer than this test's bound).
        async with Platform(url_of(mosquitto), site="new-site") as plat, bridge_running(renamed):
            doc = await plat.wait_for(lambda: plat.bills.get(bill["serial"]))
            assert doc["site"] == "new-site"
    with tempdir("site-bound") as tmp:
        run(scenario(tmp), 120)
