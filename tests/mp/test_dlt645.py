# The DL/T 645-2007 meter driver, byte-exact, under CPython and MicroPython:
# codec, streaming reader, the driver against the simulated meter over the
# in-memory UART, and every failure it must turn into MeterError.
import binascii

from firmware import dlt645 as D
from firmware.dlt645 import Dlt645Meter, FrameReader
from sim.meter import Dlt645Slave
from sim.loopuart import LoopUart
from firmware.errors import MeterError, MeterTimeout
from tests.mp.util import raises

WORKED_EXAMPLE = "68010000000000681104333334 33B316".replace(" ", "")


def h(s):
    return binascii.unhexlify(s.replace(" ", ""))


def hx(b):
    return binascii.hexlify(bytes(b)).decode().upper()


class FakeClock:
    """sleep_ms advances time: a 500 ms timeout costs no real waiting.
    With period, ticks wrap like MicroPython's ticks_ms."""

    def __init__(self, t=0, period=0):
        self.t = t
        self.period = period
        self.slept = 0

    def ticks_ms(self):
        return self.t % self.period if self.period else self.t

    def sleep_ms(self, ms):
        self.t += ms
        self.slept += ms

    def now(self):
        return 0


class Source:
    def __init__(self, energy_e4kwh=0, power_w=0, voltage_x10=0, current_x10=0,
                 meter_number="000000000000"):
        self.energy_e4kwh = energy_e4kwh
        self.power_w = power_w
        self.voltage_x10 = voltage_x10
        self.current_x10 = current_x10
        self.meter_number = meter_number


ADDR = "202312345678"


def rig(address=ADDR, meter_address=None, timeout_ms=500, **values):
    """Driver and simulated meter joined by a LoopUart pair."""
    a, b = LoopUart.pair()
    slave = Dlt645Slave(meter_address or address, Source(**values)).attach(b)
    clock = FakeClock()
    return Dlt645Meter(a, address, clock, timeout_ms), slave, a, clock


def scripted(*replies):
    """A UART whose far end answers each request with the next scripted bytes."""
    a, b = LoopUart.pair()
    queue = list(replies)

    def answer(end):
        end.read()
        if queue:
            end.write(queue.pop(0))

    b.on_receive = answer
    return a


def reply(control, data, address=ADDR, preamble=4):
    return D.build_frame(address, control, data, preamble)


def frames_in(stream, step=0):
    """Every frame a reader finds in stream, fed whole or step bytes at a time."""
    r = FrameReader()
    out = []
    chunks = [stream] if not step else [stream[i:i + step] for i in range(0, len(stream), step)]
    for c in chunks:
        pos = 0
        while pos < len(c):
            pos += r.feed(c, pos)
            if r.ready:
                out.append((D.address_str(r.address()), r.control, bytes(r.data())))
                r.next()
    return out, r


# ------------------------------------------------------------------ codec

def test_worked_example_reading_forward_active_total_is_byte_exact():
    assert hx(D.read_request("000000000001", 0x00010000)) == WORKED_EXAMPLE
    assert hx(D.build_frame("000000000001", 0x11, h("00000100"))) == WORKED_EXAMPLE
    assert D.decode_frame(h(WORKED_EXAMPLE)) == ("000000000001", 0x11, h("00000100"))


def test_driver_wakes_the_line_with_four_fe_then_sends_the_worked_example():
    meter, slave, a, clock = rig(address="000000000001", energy_e4kwh=100)
    a.tap = []
    meter.read_energy()
    assert [hx(w) for w in a.tap] == ["FEFEFEFE" + WORKED_EXAMPLE]


def test_di_goes_lowest_byte_first_with_0x33_offset():
    f = D.read_request("000000000001", 0x02010100)
    assert hx(f[10:14]) == "33343435"


def test_address_is_bcd_lowest_byte_first_both_ways():
    assert hx(D.address_bytes("202312345678")) == "785634122320"
    assert D.address_str(h("785634122320")) == "202312345678"
    assert D.address_bytes(h("785634122320")) == h("785634122320")
    assert hx(D.address_bytes(D.WILDCARD)) == "AA" * 6
    assert hx(D.address_bytes(D.BROADCAST)) == "99" * 6
    raises(ValueError, D.address_bytes, "12345")
    raises(ValueError, D.address_bytes, "20231234567X")


def test_bcd_round_trips_signed_and_unsigned():
    for n, v, signed in ((4, 0, False), (4, 99999999, False), (4, 1234567, False),
                         (3, 799999, True), (3, -799999, True), (3, -1, True), (2, 2301, False)):
        assert D.bcd_decode(D.bcd_encode(v, n, signed), signed) == v
    assert hx(D.bcd_encode(1234567, 4)) == "67452301"
    assert hx(D.bcd_encode(-72345, 3, True)) == "452387"
    raises(ValueError, D.bcd_encode, 100000000, 4)
    raises(ValueError, D.bcd_encode, 800000, 3, True)
    raises(ValueError, D.bcd_encode, -1, 2)
    raises(ValueError, D.bcd_decode, h("1A"))


def test_frames_round_trip_for_every_control_and_length():
    for control in (0x11, 0x12, 0x13, 0x91, 0xB1, 0x93, 0xD1, 0xD3):
        for n in (0, 1, 4, 5, 33, 200):
            data = bytes([(i * 7 + control) & 0xFF for i in range(n)])
            for pre in (0, 4):
                f = D.build_frame(ADDR, control, data, pre)
                assert len(f) == pre + 12 + n
                assert D.decode_frame(f) == (ADDR, control, data)
    raises(ValueError, D.build_frame, ADDR, 0x11, bytes(201))
    raises(ValueError, D.build_frame, ADDR, 0x11, b"", 5)


# ----------------------------------------------------------------- reader

def test_reader_skips_preambles_and_garbage_between_frames():
    one = reply(0x91, h("00000100 67452301"))
    two = reply(0x93, D.address_bytes(ADDR), preamble=0)
    stream = h("00 FF 16 33") + one + h("FE FE 12 68 68") + two + h("FE")
    for step in (0, 1, 3, 7):
        got, r = frames_in(stream, step)
        assert got == [(ADDR, 0x91, h("00000100 67452301")), (ADDR, 0x93, D.address_bytes(ADDR))]


def test_reader_resyncs_on_a_frame_hidden_behind_a_false_start():
    # A stray 0x68 whose "header" swallows the start of the real frame.
    real = reply(0x91, h("00000100 00010000"), preamble=0)
    stream = h("68 01 02") + real
    got, r = frames_in(stream, 1)
    assert got == [(ADDR, 0x91, h("00000100 00010000"))]


def test_reader_drops_a_bad_checksum_and_finds_the_next_frame():
    bad = bytearray(reply(0x91, h("00000100 11111111")))
    bad[-2] ^= 0x01
    good = reply(0x91, h("00000100 22222222"))
    got, r = frames_in(bytes(bad) + good, 1)
    assert got == [(ADDR, 0x91, h("00000100 22222222"))]
    assert r.rejected == 1


def test_reader_drops_a_wrong_end_byte_and_an_impossible_length():
    bad_end = bytearray(reply(0x91, h("00000100 11111111"), preamble=0))
    bad_end[-1] = 0x17
    too_long = bytearray(reply(0x91, b"", preamble=0))
    too_long[9] = 201
    good = reply(0x91, h("00000100 33333333"))
    got, r = frames_in(bytes(bad_end) + bytes(too_long) + good, 2)
    assert got == [(ADDR, 0x91, h("00000100 33333333"))]
    assert r.rejected == 2


def test_decode_frame_rejects_bad_checksum_with_meter_error():
    bad = bytearray(h(WORKED_EXAMPLE))
    bad[-2] = 0xB4
    e = raises(MeterError, D.decode_frame, bytes(bad))
    assert "checksum" in str(e)
    raises(MeterError, D.decode_frame, h(WORKED_EXAMPLE)[:-1])


def test_reader_never_reads_past_the_frame_it_is_completing():
    r = FrameReader()
    frame = reply(0x91, h("00000100 67452301"), preamble=0)
    assert r.want() == 10
    r.feed(frame[:10])
    assert r.want() == len(frame) - 10
    r.feed(frame[10:])
    assert r.ready and r.want() == 0


# ----------------------------------------------------------------- driver

def test_driver_reads_every_value_from_the_simulated_meter():
    meter, slave, a, clock = rig(energy_e4kwh=123456700, power_w=7234, voltage_x10=2301,
                                 current_x10=314, meter_number="000012345678")
    assert meter.read_energy() == 123456700
    assert meter.read_power() == 7234
    assert meter.read_voltage() == 2301
    assert meter.read_current() == 314
    assert meter.read_meter_number() == "000012345678"
    assert slave.requests == 5
    assert clock.slept == 0  # the simulated meter answers at once


def test_register_has_10_wh_resolution():
    meter, slave, a, clock = rig(energy_e4kwh=12345)
    assert meter.read_energy() == 12300
    slave.source.energy_e4kwh = 12399
    assert meter.read_energy() == 12300
    slave.source.energy_e4kwh = 12400
    assert meter.read_energy() == 12400


def test_reverse_power_and_current_read_negative_truncated_toward_zero():
    meter, slave, a, clock = rig(power_w=-1500, current_x10=-65)
    assert meter.read_power() == -1500
    assert meter.read_current() == -65
    # XXX.XXX A -> x10 A and XX.XXXX kW -> W both truncate
    m2 = Dlt645Meter(scripted(reply(0x91, h("00010202") + D.bcd_encode(31459, 3)),
                              reply(0x91, h("00000302") + D.bcd_encode(72349, 3))),
                     ADDR, FakeClock())
    assert m2.read_current() == 314
    assert m2.read_power() == 7234


def test_simulated_meter_saturates_power_like_the_register():
    meter, slave, a, clock = rig(power_w=120000)
    assert meter.read_power() == 79999


class InterfaceMeter:
    """Anything with the meter interface can stand behind the simulated meter."""

    def __init__(self):
        self.dead = False

    def read_energy(self):
        if self.dead:
            raise MeterTimeout("dead")
        return 987654

    def read_power(self):
        return 11000

    def read_voltage(self):
        return 2305

    def read_current(self):
        return 477


def test_simulated_meter_can_front_any_meter_interface_object():
    a, b = LoopUart.pair()
    inner = InterfaceMeter()
    Dlt645Slave(ADDR, inner).attach(b)
    meter = Dlt645Meter(a, ADDR, FakeClock())
    assert (meter.read_energy(), meter.read_power(), meter.read_voltage(),
            meter.read_current(), meter.read_meter_number()) == (987600, 11000, 2305, 477, ADDR)
    inner.dead = True
    raises(MeterTimeout, meter.read_energy)


def test_discover_reads_the_address_with_the_wildcard():
    a, b = LoopUart.pair()
    Dlt645Slave(ADDR, Source()).attach(b)
    a.tap = []
    assert Dlt645Meter.discover(a, FakeClock()) == ADDR
    assert hx(a.tap[0]) == "FEFEFEFE" + hx(D.build_frame(D.WILDCARD, 0x13))


def test_broadcast_and_other_addresses_get_no_answer():
    a, b = LoopUart.pair()
    slave = Dlt645Slave(ADDR, Source()).attach(b)
    a.write(D.read_request(D.BROADCAST, 0x00010000))
    a.write(D.read_request("000000000001", 0x00010000))
    assert a.read(100) is None
    assert slave.requests == 0
    assert slave.handle(D.read_request("AAAAAA345678", 0x00010000)) is not None


def test_error_reply_raises_meter_error_with_its_code():
    meter, slave, a, clock = rig()
    e = raises(MeterError, meter.read, 0x00FF0000)
    assert not isinstance(e, MeterTimeout)
    assert e.code == 0x02 and "error reply 02" in str(e) and "no requested data" in str(e)
    assert "00FF0000" in str(e)
    slave.error = 0x04
    e = raises(MeterError, meter.read_energy)
    assert e.code == 0x04 and "password" in str(e)


def test_silent_meter_raises_meter_timeout_without_real_waiting():
    meter, slave, a, clock = rig(timeout_ms=500)
    slave.silent = True
    e = raises(MeterTimeout, meter.read_energy)
    assert "no reply" in str(e) and "00010000" in str(e) and ADDR in str(e)
    assert 500 <= clock.t <= 502
    slave.silent = False
    assert meter.read_energy() == 0  # the next read recovers


def test_meter_with_another_address_stays_silent_so_the_driver_times_out():
    meter, slave, a, clock = rig(meter_address="000000000009")
    raises(MeterTimeout, meter.read_energy)


def test_timeout_holds_across_a_tick_wrap():
    a, b = LoopUart.pair()
    clock = FakeClock(t=(1 << 30) - 200, period=1 << 30)
    meter = Dlt645Meter(a, ADDR, clock, 500)
    raises(MeterTimeout, meter.read_voltage)
    assert 500 <= clock.slept <= 502


def test_reply_cut_off_mid_frame_is_a_timeout_that_says_so():
    full = reply(0x91, h("00000100 67452301"))
    meter = Dlt645Meter(scripted(full[:15]), ADDR, FakeClock())
    e = raises(MeterTimeout, meter.read_energy)
    assert "cut off" in str(e)


def test_reply_with_bad_checksum_raises_meter_error():
    meter, slave, a, clock = rig(energy_e4kwh=100)
    slave.corrupt = True
    e = raises(MeterError, meter.read_energy)
    assert not isinstance(e, MeterTimeout) and "checksum" in str(e)


def test_noise_before_the_reply_is_skipped():
    meter, slave, a, clock = rig(energy_e4kwh=5000)
    slave.noise = h("00 68 FF 68 12 16 FE")
    assert meter.read_energy() == 5000


def test_reply_from_another_meter_is_refused():
    meter = Dlt645Meter(scripted(reply(0x91, h("00000100 00010000"), address="000000000009")),
                        ADDR, FakeClock())
    e = raises(MeterError, meter.read_energy)
    assert "reply from meter 000000000009" in str(e)


def test_reply_for_another_di_is_refused():
    meter = Dlt645Meter(scripted(reply(0x91, h("00010102 0123"))), ADDR, FakeClock())
    e = raises(MeterError, meter.read_energy)
    assert "reply for DI 02010100" in str(e)


def test_wrong_length_and_non_bcd_values_are_refused():
    meter = Dlt645Meter(scripted(reply(0x91, h("00000100 674523")),
                                 reply(0x91, h("00000100 6745230A"))), ADDR, FakeClock())
    assert "3 data bytes, expected 4" in str(raises(MeterError, meter.read_energy))
    assert "not BCD" in str(raises(MeterError, meter.read_energy))


def test_late_reply_to_a_timed_out_request_is_drained_not_taken():
    a, b = LoopUart.pair()
    meter = Dlt645Meter(a, ADDR, FakeClock())
    # a stale voltage reply sits in the UART when we ask for energy
    a.inject(reply(0x91, h("00010102 0123")))
    Dlt645Slave(ADDR, Source(energy_e4kwh=700)).attach(b)
    assert meter.read_energy() == 700


def test_request_echoed_by_a_half_duplex_transceiver_is_ignored():
    a, b = LoopUart.pair()
    slave = Dlt645Slave(ADDR, Source(voltage_x10=2200))

    def echo_then_answer(end):
        got = end.read()
        end.write(got)  # the driver hears itself...
        end.inject(got)  # ...and so does the meter
        slave.poll(end)

    b.on_receive = echo_then_answer
    assert Dlt645Meter(a, ADDR, FakeClock()).read_voltage() == 2200


def test_follow_up_frames_are_joined():
    meter, slave, a, clock = rig(meter_number="123456789012")
    slave.max_data = 7  # DI + 3 bytes, then DI + 2 bytes + SEQ per follow-up
    a.tap = []
    assert meter.read_meter_number() == "123456789012"
    controls = [D.decode_frame(w)[1] for w in a.tap]
    assert controls == [0x11, 0x12, 0x12]
    assert slave.requests == 3


def test_driver_and_slave_allocate_fixed_buffers_once():
    meter, slave, a, clock = rig(energy_e4kwh=10000)
    bufs = (meter._tx, meter._rx._buf, meter._val)
    for _ in range(20):
        assert meter.read_energy() == 10000
    assert (meter._tx, meter._rx._buf, meter._val) == bufs
    assert all(x is y for x, y in zip((meter._tx, meter._rx._buf, meter._val), bufs))
