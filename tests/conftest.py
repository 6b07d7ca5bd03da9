# Shared pytest fixtures. Keep this file thin: logic lives in helper modules
# (tests/broker.py for MQTT brokers) so other suites can import it directly.
import pytest
from hypothesis import settings

from tests import broker as _broker
from tests.skipgate import pytest_configure  # noqa: F401  (CI=true: unlisted skips fail)

# No hypothesis deadline: a time limit per example is a timed assertion, and
# on a loaded 2-core machine running the lanes side by side an example may
# wait half a second for a CPU ("Unreliable test timings" failed a run).
# Speed is measured in benchmarks, never asserted in tests.
settings.register_profile("pile-companion", deadline=None)
settings.load_profile("pile-companion")


def pytest_collection_modifyitems(config, items):
    # The slow lane (tests marked `slow`, tens of seconds each) first, each
    # followed by one quick test: tools/test.sh runs pytest-xdist with
    # `--maxschedchunk 1`, which hands each worker two tests to start with,
    # so the slow tests start at once on different workers and end with the
    # rest instead of after it.
    slow = [i for i in items if i.get_closest_marker("slow") is not None]
    if not slow:
        return
    rest = [i for i in items if i.get_closest_marker("slow") is None]
    out = []
    for i in slow:
        out.append(i)
        if rest:
            out.append(rest.pop(0))
    items[:] = out + rest


@pytest.fixture
def mosquitto():
    """A started Mosquitto on a free loopback port, anonymous access allowed."""
    if not _broker.mosquitto_available():
        pytest.skip("mosquitto not installed (tools/setup.sh installs it)")
    with _broker.Mosquitto() as b:
        yield b


@pytest.fixture
def mosquitto_factory():
    """make(**opts) -> a started Mosquitto (see tests.broker.Mosquitto);
    every broker made is stopped and its temp dir removed after the test."""
    if not _broker.mosquitto_available():
        pytest.skip("mosquitto not installed (tools/setup.sh installs it)")
    made = []

    def make(**opts):
        b = _broker.Mosquitto(**opts)
        made.append(b)
        return b.start()

    yield make
    for b in made:
        b.close()


@pytest.fixture
def mqtt_broker():
    """Any started broker: Mosquitto when installed, else the amqtt stand-in."""
    with _broker.make_broker() as b:
        yield b
