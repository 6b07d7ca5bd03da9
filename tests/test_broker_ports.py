# Ports of the local test brokers (sim/brokers.py) without the race: amqtt
# binds port 0 itself and reports the port it got; Mosquitto, which cannot,
# gets a port picked beforehand and picks again (bounded) when another
# process took it first.
import socket

import pytest

from sim import brokers as broker
from sim.brokers import Amqtt, BrokerError, Mosquitto, RefusedPort, mqtt_ping

needs_mosquitto = pytest.mark.skipif(not broker.mosquitto_available(),
                                     reason="mosquitto not installed (tools/setup.sh installs it)")


@pytest.fixture
def taken():
    """A loopback port another process could hold: listening, never answering."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    yield s.getsockname()[1]
    s.close()


def _picks(monkeypatch, first):
    """free_port hands out `first` ports (the race lost), then real ones."""
    real = broker.free_port
    handed = []

    def pick(host="127.0.0.1"):
        handed.append(first.pop(0) if first else real(host))
        return handed[-1]
    monkeypatch.setattr(broker, "free_port", pick)
    return handed


@needs_mosquitto
def test_mosquitto_whose_port_was_taken_first_starts_on_another(monkeypatch, taken):
    handed = _picks(monkeypatch, [taken])
    with Mosquitto() as b:
        assert handed[0] == taken and b.port == handed[1] != taken
        assert mqtt_ping(b.host, b.port)
        assert b.log_text().count("Address already in use") == 1


@needs_mosquitto
def test_mosquitto_gives_up_after_its_tries_saying_why(monkeypatch, taken):
    handed = _picks(monkeypatch, [taken] * 10)
    b = Mosquitto()
    try:
        with pytest.raises(BrokerError) as e:
            b.start()
        msg = str(e.value)
        assert "mosquitto did not start" in msg and "already in use" in msg
        assert "(%d ports tried, each taken by another process" % broker._START_TRIES in msg
        assert handed == [taken] * broker._START_TRIES          # one pick per try
    finally:
        b.close()


def test_amqtt_binds_port_zero_and_reports_the_port_it_got():
    if not broker.amqtt_available():
        pytest.skip("amqtt is not installed")
    b = Amqtt()
    try:
        assert b.port == 0                   # nothing picked beforehand
        b.start()
        port = b.port
        assert port != 0 and mqtt_ping(b.host, port)
        assert "amqtt: running on 127.0.0.1:%d\n" % port in b.log_text()
        b.restart()                          # the same port again, for clients to reconnect
        assert b.port == port and mqtt_ping(b.host, port)
    finally:
        b.close()


def test_a_refused_port_refuses_and_cannot_be_taken_while_held():
    with RefusedPort() as port:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        other = socket.socket()
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            with pytest.raises(OSError):
                other.bind(("127.0.0.1", port))
        finally:
            other.close()
