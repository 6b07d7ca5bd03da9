# main.py for a pile controller board (MicroPython). UNTESTED ON HARDWARE:
# it compiles under MicroPython and builds and runs the Pile against a fake
# `machine` module in tests/test_board_main.py; pins, UART ids and the
# RS485 direction handling have not met a real board yet. Copy it to the
# board's root as main.py (README.md, "A real board").
#
# What it wires (docs/CONVENTIONS.md, injected hardware):
#   uart       the pile link (YKC V1.6 to the platform, or the bridge's serial port)
#   meter      firmware.dlt645.Dlt645Meter on an RS485 UART (DE/RE pin driven here)
#   contactor  one output pin (plus an optional auxiliary-contact input)
#   vehicle    plug sense from the control pilot comparator; no BMS: soc 0,
#              vin None (a DC pile needs its GB/T 27930 CAN stack injected here)
#   clock      time.ticks_ms / ticks_diff / sleep_ms and the RTC as wall clock
#              (local time, seconds since 2000-01-01; 0x56 sets it)
#
# Importing this module starts nothing: main() runs only when the board
# runs the file as its main script.
import sys
import time

# Hardware-specific: change these for the board. Pin numbers are GPIO
# numbers as machine.Pin takes them (the values below suit an ESP32 with
# UART1/UART2 free; they are examples, not a reference design).
CONFIG = {
    "pile": "55031412782305",     # the pile's 14-digit YKC code (BCD on the wire)
    "gun": "01",
    "pile_type": 0,               # 0 DC, 1 AC (login 0x01)
    "root": "/data",              # flash folder: journal, tariff, counters, fw slots
    "journal_bytes": 65536,       # _JOURNAL_BYTES budget on flash
    # pile link: UART id, baud rate, TX pin, RX pin
    "link_uart": (1, 115200, 17, 16),
    # DL/T 645-2007 meter: UART id, baud (2400 is the standard's default,
    # 8 data bits, even parity, 1 stop), TX, RX, RS485 driver-enable pin
    # (high = transmit; None when the transceiver switches by itself)
    "meter_uart": (2, 2400, 25, 26, 27),
    "meter_address": "AAAAAAAAAAAA",   # nameplate address; A = wildcard (one meter on the bus)
    "meter_timeout_ms": 500,
    "contactor_pin": 32,          # output, high = contactor closed
    "contactor_feedback_pin": None,    # input, high = auxiliary contact closed, or None
    "plug_pin": 34,               # input from the pilot comparator
    "plug_active": 1,             # pin level that means "plugged in"
    "max_power_w": 60000,         # what the power stage delivers (no BMS to ask)
    "watchdog_ms": 8000,          # 0: no watchdog
    # keys (bytes) or None; provisioned per pile, never committed (docs/security.md)
    "cmd_key": None,              # signed commands (0xD2)
    "upgrade_key": None,          # firmware upgrade over the link (0xE8 / 0xEA)
    "mac_key": None,              # the bill MAC in 0xEB
    "hmi_version": None,
}


class BoardClock:
    """ticks from time.ticks_*, wall time from the RTC (local time)."""

    def __init__(self, rtc, to_secs, to_civil):
        self._rtc = rtc
        self._to_secs = to_secs
        self._to_civil = to_civil

    def ticks_ms(self):
        return time.ticks_ms()

    def ticks_diff(self, a, b):
        return time.ticks_diff(a, b)

    def sleep_ms(self, ms):
        time.sleep_ms(ms)

    def now(self):
        y, mo, d, _wd, h, mi, s, _sub = self._rtc.datetime()
        return self._to_secs(y, mo, d, h, mi, s)

    def set_now(self, secs):
        y, mo, d, h, mi, s, wd = self._to_civil(secs)
        self._rtc.datetime((y, mo, d, wd - 1, h, mi, s, 0))   # RTC weekday 0 = Monday


class Rs485:
    """A half-duplex RS485 UART: driver enabled while sending, then back to
    receive once the last bit is out (the meter answers within ms)."""

    def __init__(self, uart, de, baud):
        self._uart = uart
        self._de = de
        self._us_per_byte = 11 * 1000000 // baud   # start + 8 + parity + stop
        if de is not None:
            de.value(0)

    def write(self, b):
        de = self._de
        if de is None:
            return self._uart.write(b)
        de.value(1)
        n = self._uart.write(b)
        flush = getattr(self._uart, "flush", None)
        if flush is not None:
            flush()                  # returns when the FIFO is empty (recent ports)
        else:
            time.sleep_us(self._us_per_byte * len(b))
        de.value(0)
        return n

    def read(self, n):
        return self._uart.read(n)


class Contactor:
    def __init__(self, pin, feedback=None):
        self._pin = pin
        self._fb = feedback
        pin.value(0)

    def close(self):
        self._pin.value(1)

    def open(self):
        self._pin.value(0)

    @property
    def closed(self):
        if self._fb is not None:
            return self._fb.value() == 1
        return self._pin.value() == 1


class PilotVehicle:
    """Plug state from the pilot comparator; nothing from a BMS."""

    def __init__(self, pin, active, max_power):
        self._pin = pin
        self._active = active
        self.max_power = max_power
        self.soc = 0
        self.vin = None

    @property
    def plugged(self):
        return self._pin.value() == self._active


def _mkdir(path):
    import os
    try:
        os.mkdir(path)
    except OSError:
        pass            # exists


def build(machine, cfg=None):
    """The Pile for this board from `machine` (the MicroPython module, or a
    fake in tests) and CONFIG. Runs the firmware-slot selection first when
    an upgrade key is set (firmware/remote.py boot()), so the slot's modules
    are the ones imported below."""
    c = dict(CONFIG)
    if cfg:
        c.update(cfg)
    root = c["root"]
    _mkdir(root)
    pile_cfg = {"pile": c["pile"], "gun": c["gun"], "pile_type": c["pile_type"],
                "journal_bytes": c["journal_bytes"], "hmi_version": c["hmi_version"]}
    for k in ("cmd_key", "upgrade_key", "mac_key"):
        if c[k]:
            pile_cfg[k] = c[k]
    if c["upgrade_key"]:
        from firmware import remote
        from firmware.pile import FW_VERSION
        up = remote.boot(root, c["upgrade_key"], factory_version=FW_VERSION,
                         hmi_version=c["hmi_version"])
        sys.path.insert(0, up.slot_path(up.booted))
        for name in [m for m in sys.modules if m != __name__ and (
                m.startswith("firmware") or m.startswith("protocol"))]:
            del sys.modules[name]    # import the booted slot's copies from here on
        pile_cfg["updater"] = up
    from firmware.dlt645 import Dlt645Meter
    from firmware.pile import Pile
    from protocol import fields as F

    Pin = machine.Pin
    clock = BoardClock(machine.RTC(), F.to_secs, F.to_civil)
    lid, lbaud, ltx, lrx = c["link_uart"]
    link = machine.UART(lid, baudrate=lbaud, tx=ltx, rx=lrx, bits=8, parity=None, stop=1,
                        timeout=0)
    mid, mbaud, mtx, mrx, mde = c["meter_uart"]
    mu = machine.UART(mid, baudrate=mbaud, tx=mtx, rx=mrx, bits=8, parity=0, stop=1, timeout=0)
    meter = Dlt645Meter(Rs485(mu, None if mde is None else Pin(mde, Pin.OUT), mbaud),
                        c["meter_address"], clock, timeout_ms=c["meter_timeout_ms"])
    fb = c["contactor_feedback_pin"]
    contactor = Contactor(Pin(c["contactor_pin"], Pin.OUT),
                          None if fb is None else Pin(fb, Pin.IN))
    vehicle = PilotVehicle(Pin(c["plug_pin"], Pin.IN), c["plug_active"], c["max_power_w"])

    def log(msg):
        print(msg)

    return Pile(pile_cfg, root, clock, link, meter, contactor, vehicle, log=log,
                reboot=machine.reset)


def run(pile, machine=None, watchdog_ms=0, rounds=0):
    """Poll the pile for ever (rounds > 0: that many times, for tests)."""
    wdt = machine.WDT(timeout=watchdog_ms) if machine is not None and watchdog_ms else None
    n = 0
    while not rounds or n < rounds:
        wait = pile.poll()
        if wdt is not None:
            wdt.feed()
        time.sleep_ms(wait if wait < 20 else 20)   # link bytes wait in the UART's buffer
        n += 1


def main():
    try:
        import machine
    except ImportError:
        raise SystemExit("firmware/main.py runs on a board (no `machine` module here); "
                         "use pile-sim to run the firmware on CPython")
    pile = build(machine)
    run(pile, machine, CONFIG["watchdog_ms"])


if __name__ == "__main__":
    main()
