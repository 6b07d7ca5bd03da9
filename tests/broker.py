# The broker helper lives in sim/brokers.py (the demo and the chaos harness
# start brokers too); tests import it under its old name.
import sys

from sim import brokers as _broker

sys.modules[__name__] = _broker
