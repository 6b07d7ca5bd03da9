# The broker helper lives in host/broker.py (the demo and the chaos harness
# start brokers too); tests import it under its old name.
import sys

from host import broker as _broker

sys.modules[__name__] = _broker
