# The bridge against the shipped, locked-down Mosquitto configuration
# (host/mosquitto/, tools/mqtt_site.py): TLS with the site's CA, a client
# certificate and a password, user name = site id, ACL pc/<site>/#.
import os
import shutil
import ssl

import pytest

from sim.testkit import make_bill, make_extra
from tests import broker as brokers
from tests.test_bridge_helpers import (
    PILE_A, Platform, bridge_running, connect_pile, fast_config, run, tempdir)

pytestmark = pytest.mark.skipif(
    not brokers.mosquitto_available() or shutil.which("openssl") is None
    or brokers.find_mosquitto_passwd() is None,
    reason="needs mosquitto, mosquitto_passwd and openssl")


def test_bridge_over_tls_with_certificate_and_password_relays_a_bill():
    from host import mqtt_site
    from tools import mqtt_site as mqtt_site_cli

    async def scenario(tmp, pki, broker):
        site = pki.client_files("t1")
        cfg = fast_config(tmp, "mqtts://127.0.0.1:%d" % broker.tls_port,
                          mqtt={"username": "t1", "password_file": site["password"],
                                "ca_file": pki.ca_crt, "cert_file": site["cert"],
                                "key_file": site["key"]})
        plat_files = pki.client_files("platform")
        ctx = ssl.create_default_context(cafile=pki.ca_crt)
        ctx.load_cert_chain(plat_files["cert"], plat_files["key"])
        with open(plat_files["password"]) as f:
            pw = f.read().strip()
        async with bridge_running(cfg) as b, \
                Platform("mqtt://127.0.0.1:%d" % broker.tls_port, username="platform", password=pw,
                         tls_context=ctx) as plat:
            pile = await connect_pile(PILE_A, b.tcp_port)
            bill = make_bill(PILE_A, 1)
            assert await pile.send_bill(bill, make_extra(bill)) == 0
            await pile.wait_for(lambda: bill["serial"] in pile.settled, 10)
            assert plat.bills[bill["serial"]]["site"] == "t1"
            await pile.close()

    with tempdir("tls") as tmp:
        root = os.path.join(tmp, "pki")
        assert mqtt_site_cli.main(["init", "--dir", root, "--server-name", "localhost",
                               "--server-ip", "127.0.0.1"]) == 0
        assert mqtt_site_cli.main(["add-site", "t1", "--dir", root]) == 0
        pki = mqtt_site.Pki(root)
        conf = mqtt_site.render_conf(pki.root, port="{tls_port}", bind="{host}")
        with brokers.Mosquitto(config=conf) as broker:
            run(scenario(tmp, pki, broker))
