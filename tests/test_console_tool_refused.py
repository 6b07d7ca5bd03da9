# pile-console's bill table and CSV export for a bill the platform refused
# (0xE4 result 1: its MAC does not verify): the JSON the real firmware
# console answers, rendered and exported by tools/console.py.
import csv
import io
import json

from firmware.console import Console
from sim.loopuart import LoopUart
from tests.mp.pilekit import Rig, serial
from tests.mp.util import rmtree, tmpdir
from host import console as tool


class Client:
    """tools.console's client interface, straight onto the firmware console."""

    def __init__(self, con, end):
        self.con = con
        self.end = end

    def json(self, line):
        self.end.read(65536)
        self.end.write(("json " + line + "\r").encode())
        self.con.poll()
        out = self.end.read(65536).decode()
        return json.loads(out.split("\r\n")[1])


def test_bills_table_and_csv_show_the_platform_result_of_a_refused_bill():
    root = tmpdir("contool")
    r = Rig(root)
    d = tmpdir("contool-out")
    try:
        a, end = LoopUart.pair()
        c = Client(Console(r.pile, a), end)
        r.online()
        r.platform.settle_result = 1
        r.start(serial(1))
        r.run(60000)
        r.stop()
        r.run(30000, lambda: r.pile.journal.status(serial(1)) == "illegal")
        out = io.StringIO()
        tool.show_bills(c.json("bills"), out)
        lines = out.getvalue().splitlines()
        head, row = lines[0], lines[2]   # a rule under the head
        assert head.split()[-1] == "result"
        assert row.split()[0] == serial(1) and row.split()[1] == "refused"
        assert row.endswith("1 (MAC)")
        bills = tool.collect_bills(c, every=True)
        tool.write_csv(bills, d + "/b.csv")
        with open(d + "/b.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [(x["serial"], x["state"], x["result"]) for x in rows] == [(serial(1), "refused", "1")]
    finally:
        rmtree(d)
        rmtree(root)
