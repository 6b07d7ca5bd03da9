# Our DL/T 645 driver (firmware/dlt645.py, unchanged) against a peer no one
# here wrote: the PyPI `dlt645` package's meter emulator, over TCP on a free
# loopback port and over a pty. Values are set in the emulator and read back
# through sim/meterlink.py's uart adapters.
import os
import pty

import pytest
from dlt645 import MeterServerService

from firmware.dlt645 import Dlt645Meter
from firmware.errors import MeterError, MeterTimeout
from sim.meterlink import FdUart, HostClock, SerialUart

ADDRESS = "202312345678"  # as on the nameplate
WIRE_ORDER = "785634122320"  # the emulator takes address strings in wire order
TIMEOUT_MS = 2000  # generous: the emulator runs in threads on a shared CI box


def _tcp_emulator():
    svc = MeterServerService.new_tcp_server("127.0.0.1", 0, timeout=1.0)
    svc.set_address(WIRE_ORDER)
    assert svc.start(), "emulator did not start"
    # start() returns once bound; port 0 became the real, free port.
    uart = SerialUart.open("socket://127.0.0.1:%d" % svc.server.port)

    def stop():
        uart.close()
        svc.stop()

    return svc, uart, stop


def _pty_emulator():
    master, slave = pty.openpty()
    # The emulator opens the slave side by name, with no parity (ptys).
    svc = MeterServerService.new_rtu_server(os.ttyname(slave), 8, 1, 9600, "N", 1.0)
    svc.set_address(WIRE_ORDER)
    assert svc.start(), "emulator did not open the pty"
    uart = FdUart(master)

    def stop():
        svc.stop()
        os.close(master)
        os.close(slave)

    return svc, uart, stop


# One emulator per transport for the module (building one deep-copies its
# whole data model, ~0.8 s); every test sets the values it reads.
@pytest.fixture(scope="module", params=["tcp", "pty"])
def emulator(request):
    svc, uart, stop = (_tcp_emulator if request.param == "tcp" else _pty_emulator)()
    try:
        yield svc, uart
    finally:
        stop()


def meter_on(uart, address=ADDRESS):
    return Dlt645Meter(uart, address, HostClock(), TIMEOUT_MS)


def test_energy_set_in_emulator_reads_back_in_e4kwh(emulator):
    svc, uart = emulator
    assert svc.set_00(0x00010000, 12345.67)
    assert meter_on(uart).read_energy() == 123456700


def test_energy_register_steps_by_10_wh(emulator):
    svc, uart = emulator
    meter = meter_on(uart)
    assert svc.set_00(0x00010000, 0.01)
    assert meter.read_energy() == 100
    assert svc.set_00(0x00010000, 799999.99)  # the emulator's ceiling
    assert meter.read_energy() == 7999999900


def test_power_voltage_current_and_meter_number_read_back(emulator):
    svc, uart = emulator
    assert svc.set_02(0x02030000, 7.2345)  # kW
    assert svc.set_02(0x02010100, 230.1)  # V
    assert svc.set_02(0x02020100, 31.456)  # A
    assert svc.set_04(0x04000402, "000012345678")
    meter = meter_on(uart)
    assert meter.read_power() == 7234  # W, truncated
    assert meter.read_voltage() == 2301  # x10 V
    assert meter.read_current() == 314  # x10 A, truncated
    assert meter.read_meter_number() == "000012345678"


def test_reverse_power_reads_negative(emulator):
    svc, uart = emulator
    assert svc.set_02(0x02030000, -1.5)
    assert meter_on(uart).read_power() == -1500


def test_discover_finds_the_emulator_address_with_the_wildcard(emulator):
    svc, uart = emulator
    assert Dlt645Meter.discover(uart, HostClock(), TIMEOUT_MS) == ADDRESS


def test_unknown_di_gets_an_error_reply_that_becomes_meter_error(emulator):
    svc, uart = emulator
    meter = meter_on(uart)
    with pytest.raises(MeterError) as e:
        meter.read(0x00FF0000)
    assert not isinstance(e.value, MeterTimeout)
    assert e.value.code == 0x02 and "no requested data" in str(e.value)
    svc.set_00(0x00010000, 1.0)
    assert meter.read_energy() == 10000  # the link is still good afterwards


def test_stopped_emulator_is_a_timeout_not_a_zero():
    master, slave = pty.openpty()
    try:
        # Nobody serves the pty: the request goes out and nothing comes back.
        meter = Dlt645Meter(FdUart(master), ADDRESS, HostClock(), 100)
        with pytest.raises(MeterTimeout):
            meter.read_energy()
    finally:
        os.close(master)
        os.close(slave)
