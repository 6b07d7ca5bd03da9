"""Local MQTT brokers for tests, the demo and the chaos harness: Mosquitto as
a child process, or amqtt.

Every broker here is a child process on a loopback port, configured from a
unique temp dir, awaited until it answers an MQTT CONNECT (bounded poll, no
fixed sleep), stopped by its pid and restartable on the same port.

Ports: amqtt (our own child) binds port 0 and reports the port the kernel
gave it. Mosquitto cannot: 2.0 refuses `port 0` and reads `listener 0 ADDR`
as a unix socket at path ADDR. So its port is picked before it starts (the
kernel's choice for a moment-bound socket), and when another process takes
that number first Mosquitto exits logging "Address already in use": we pick
again, at most _START_TRIES times, then raise BrokerError saying so.

    from sim.brokers import Mosquitto, TLS   (tests: tests.broker)
    with Mosquitto(passwords={"site-1": "pw"}, acl="topic readwrite pc/#\\n") as b:
        ...  # b.host, b.port, b.tls_port, b.pid
        b.restart()          # same port, same persistence dir
        b.stop(kill=True)    # SIGKILL: a broker crash, nothing saved

`make_broker(**opts)` gives Mosquitto when it is installed, else amqtt (a
pure-Python broker: MQTT 3.1.1, anonymous only here) for plain tests.

Running as root: Mosquitto switches to user `mosquitto` after reading its
config, and from 2.0 it opens the password, ACL, key and persistence files
as that user, so files in our 0700 temp dir owned by root would be
unreadable. The generated config therefore says `user root` when we are
root: the files stay private to whoever runs the tests, nothing is chown'ed,
and it works whether or not a `mosquitto` user exists. That is only for
throw-away test brokers on 127.0.0.1; the production config
(host/mosquitto/site.conf) keeps the default unprivileged user and
docs/mqtt-security.md says which files it must be able to read.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref

_READY_TIMEOUT = 10.0  # seconds a broker gets to answer its first CONNECT
_STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
_POLL = 0.02  # seconds between readiness probes
_START_TRIES = 5  # ports tried when another process took ours (Mosquitto)

class BrokerError(RuntimeError):
    """The broker could not be started or did not become ready."""


class BrokerUnsupported(BrokerError):
    """The requested feature is not available with this broker."""


def free_port(host="127.0.0.1"):
    """A TCP port nobody listens on right now (the kernel's choice). Racy:
    another process may take it before ours binds it. Only for a server
    that cannot bind 0 itself (Mosquitto), with a retry on "in use"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class RefusedPort:
    """A loopback port held bound but not listening, for a client that must
    find nobody there (a bridge whose broker is down): connections to it are
    refused, and while it is held no other process can bind it. Binding 0
    and closing would hand out a number anybody may take next.

        with RefusedPort() as port: ... "mqtt://127.0.0.1:%d" % port ...
    """

    def __init__(self, host="127.0.0.1"):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((host, 0))
        self.port = self._sock.getsockname()[1]

    def close(self):
        self._sock.close()

    def __enter__(self):
        return self.port

    def __exit__(self, *exc):
        self.close()


def find_mosquitto():
    """Path of the mosquitto binary, or None. $PC_MOSQUITTO overrides."""
    env = os.environ.get("PC_MOSQUITTO")
    if env:
        return env if os.access(env, os.X_OK) else None
    found = shutil.which("mosquitto")
    if found:
        return found
    # Debian installs it in /usr/sbin, which is not on a normal user's PATH.
    for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(p, os.X_OK):
            return p
    return None


def find_mosquitto_passwd():
    return shutil.which("mosquitto_passwd") or (
        "/usr/bin/mosquitto_passwd" if os.access("/usr/bin/mosquitto_passwd", os.X_OK) else None)


def mosquitto_available():
    return find_mosquitto() is not None


def amqtt_available():
    try:
        import amqtt.broker  # noqa: F401
    except ImportError:
        return False
    return True


def write_password_file(path, users):
    """Write a Mosquitto password file for {user: password} (hashed in place)."""
    tool = find_mosquitto_passwd()
    if tool is None:
        raise BrokerError("mosquitto_passwd not found (install mosquitto)")
    for name in users:
        if not name or ":" in name:
            raise ValueError("bad MQTT user name %r" % name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        for name, pw in users.items():
            f.write("%s:%s\n" % (name, pw))
    # -U hashes every plain-text password of the file in place, in one call,
    # and keeps passwords off the command line.
    subprocess.run([tool, "-U", path], check=True, capture_output=True, timeout=30)
    return path


def mqtt_ping(host, port, timeout=1.0):
    """True when an MQTT broker answers a CONNECT with a CONNACK (any code).

    A refused CONNACK (bad credentials) still proves the broker is serving.
    """
    # MQTT 3.1.1 CONNECT, clean session, keepalive 10 s, empty client id.
    pkt = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x0a\x00\x00"
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(pkt)
            head = _recv_exact(s, 2)
            if head is None or head[0] != 0x20:
                return False
            s.sendall(b"\xe0\x00")  # DISCONNECT, so the broker logs a clean close
            return True
    except OSError:
        return False


def _recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def tcp_open(host, port, timeout=1.0):
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class TLS:
    """A TLS listener: CA file, server certificate and key (PEM paths)."""

    def __init__(self, cafile, certfile, keyfile, require_certificate=False,
                 use_identity_as_username=False, tls_version="tlsv1.2"):
        self.cafile = str(cafile)
        self.certfile = str(certfile)
        self.keyfile = str(keyfile)
        self.require_certificate = require_certificate
        self.use_identity_as_username = use_identity_as_username
        self.tls_version = tls_version

    def config_lines(self):
        lines = [
            "cafile " + self.cafile,
            "certfile " + self.certfile,
            "keyfile " + self.keyfile,
            "require_certificate " + _bool(self.require_certificate),
            "use_identity_as_username " + _bool(self.use_identity_as_username),
        ]
        if self.tls_version:
            lines.append("tls_version " + self.tls_version)
        return lines


def _bool(v):
    return "true" if v else "false"


class _ChildBroker:
    """Start / readiness / stop / restart of a broker child process."""

    kind = "?"
    _ready_marker = "?"  # a log line the child writes once it serves
    _reload_marker = "?"
    # True: the child binds port 0 and its ready line ends with the port it
    # got. False: the port is picked here beforehand (free_port, with retry).
    _binds_zero = False

    def __init__(self, host="127.0.0.1", port=None, ready_timeout=_READY_TIMEOUT, workdir=None):
        self.host = host
        self._fixed_port = port is not None
        self.port = port or (0 if self._binds_zero else free_port(host))
        self.tls_port = None
        self.ready_timeout = ready_timeout
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="pc-%s-" % self.kind)
        self.log_path = os.path.join(self.workdir, self.kind + ".log")
        self._log_start = 0
        # What must be undone even if the caller forgets close(): the child
        # and our temp dir. finalize runs on garbage collection and at exit.
        self._state = {"proc": None, "log": None,
                       "rmdir": self.workdir if self._own_workdir else None}
        self._finalizer = weakref.finalize(self, _cleanup, self._state)

    @property
    def _proc(self):
        return self._state["proc"]

    # -- subclass hooks
    def _command(self):
        raise NotImplementedError

    def _write_config(self):
        pass

    def _probes(self):
        """[(host, port, probe)] that must all succeed for 'ready'."""
        return [(self.host, self.port, mqtt_ping)]

    def _repick_ports(self):
        self.port = free_port(self.host)

    # -- public
    @property
    def pid(self):
        return self._proc.pid if self._proc else None

    @property
    def running(self):
        return self._proc is not None and self._proc.poll() is None

    @property
    def url(self):
        return "mqtt://%s:%d" % (self.host, self.port)

    def start(self):
        """Start the child and return once it answers; BrokerError otherwise."""
        if self.running:
            return self
        tries = 1 if self._fixed_port or self.port == 0 else _START_TRIES
        for attempt in range(tries):
            self._write_config()
            self._spawn()
            err = self._await_ready()
            if err is None:
                return self
            self.stop()
            # A port chosen before the broker binds it (Mosquitto cannot bind
            # 0): another process on this shared machine may take it first.
            # Pick new ones and retry, a bounded number of times.
            if _in_use(err) and attempt + 1 < tries:
                self._repick_ports()
                continue
            if _in_use(err) and tries > 1:
                err += (" (%d ports tried, each taken by another process before %s bound it)"
                        % (tries, self.kind))
            raise BrokerError("%s did not start: %s\n--- log %s ---\n%s"
                              % (self.kind, err, self.log_path, self.log_text()[-4000:]))
        raise BrokerError("unreachable")

    def stop(self, kill=False, timeout=_STOP_TIMEOUT):
        """Stop the child by its pid: SIGTERM (clean, saves persistence), or
        SIGKILL with kill=True (a crash). Idempotent."""
        _stop_child(self._state, kill, timeout)

    def restart(self, kill=False):
        """Stop, then start again on the same port(s) with the same files."""
        self.stop(kill=kill)
        fixed, self._fixed_port = self._fixed_port, True
        try:
            deadline = time.monotonic() + self.ready_timeout
            while True:
                try:
                    return self.start()
                except BrokerError as e:
                    # The old socket may linger for a moment after the exit.
                    if not _in_use(str(e)) or time.monotonic() > deadline:
                        raise
                    time.sleep(_POLL * 5)
        finally:
            self._fixed_port = fixed

    def reload(self):
        """SIGHUP by pid (Mosquitto re-reads its password and ACL files);
        returns once the broker has logged that it is reloading."""
        if not self.running:
            raise BrokerError("%s is not running" % self.kind)
        start = os.path.getsize(self.log_path)
        os.kill(self.pid, signal.SIGHUP)
        deadline = time.monotonic() + self.ready_timeout
        while self._reload_marker not in self.log_text(start):
            if time.monotonic() > deadline or not self.running:
                raise BrokerError("%s did not reload: %s" % (self.kind, self._last_log_line()))
            time.sleep(_POLL)

    def close(self):
        """Stop and remove the temp dir (only if this object created it)."""
        self._finalizer()

    def log_text(self, start=0):
        """The broker's log (stdout + stderr of every run), from byte start."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(start)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<%s %s:%s pid=%s>" % (type(self).__name__, self.host, self.port, self.pid)

    # -- internals
    def _spawn(self):
        log = self._state["log"] = open(self.log_path, "ab")
        self._log_start = log.tell()
        self._state["proc"] = subprocess.Popen(
            self._command(), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, cwd=self.workdir, env=self._env())

    def _env(self):
        return None

    def _await_ready(self):
        """None when every probe succeeds before the deadline, else a reason."""
        deadline = time.monotonic() + self.ready_timeout
        pending = None
        announced = False
        while True:
            if self._proc.poll() is not None:
                return "exited with code %s (%s)" % (self._proc.returncode, self._last_log_line())
            # The port may be answered by another process that holds it (a
            # lost race for a free port): only probe once *this* child has
            # said in its log that it is serving, and keep checking it lives.
            if not announced:
                announced = self._ready_marker in self.log_text(self._log_start)
                if announced and self.port == 0:
                    self.port = self._reported_port()
                    announced = self.port != 0
                if announced:
                    pending = list(self._probes())
            if announced:
                pending = [p for p in pending if not p[2](p[0], p[1])]
                if not pending and self._proc.poll() is None:
                    return None
            if time.monotonic() > deadline:
                if pending is None:
                    return "no %r line in its log within %.0f s" % (
                        self._ready_marker.strip(), self.ready_timeout)
                return "no answer on %s within %.0f s" % (
                    ", ".join("%s:%d" % (h, p) for h, p, _ in pending), self.ready_timeout)
            time.sleep(_POLL)

    def _reported_port(self):
        # "<ready marker> on HOST:PORT\n": the port the child's bind(0) got;
        # 0 while that line is not complete in the log yet.
        for line in self.log_text(self._log_start).splitlines(True):
            if self._ready_marker in line and line.endswith("\n"):
                return int(line.rsplit(":", 1)[1])
        return 0

    def _last_log_line(self):
        lines = [l for l in self.log_text(self._log_start).splitlines() if l.strip()]
        errs = [l for l in lines if "rror" in l]
        return (errs or lines or ["no log"])[-1]


class Mosquitto(_ChildBroker):
    """Mosquitto in a child process with a generated config.

    anonymous: None = allowed unless passwords / password_file are given.
    passwords: {user: password} -> a password file made with mosquitto_passwd.
    password_file, acl_file: existing files to use instead.
    acl: ACL file text (topic / user / pattern lines).
    tls: a TLS(...) listener on self.tls_port (a second free port).
    plain: keep the plain MQTT listener on self.port (False: TLS only).
    persistence: True (a dir inside the temp dir) or a dir path to use.
    extra_config: lines appended to the generated config.
    config: the whole config text instead, with {host}, {port}, {tls_port}
        and {workdir} substituted; readiness then probes every port named.
    verbose: log_type all (connects, subscribes, ACL denials) in the log.
    """

    kind = "mosquitto"
    _ready_marker = " running\n"  # "mosquitto version X running", after all listeners opened
    # Logged from the main loop as it re-reads the files; a connection it
    # accepts after this line is checked against the new files.
    _reload_marker = "Reloading config"

    def __init__(self, host="127.0.0.1", port=None, *, anonymous=None, passwords=None,
                 password_file=None, acl=None, acl_file=None, tls=None, plain=True,
                 persistence=False, extra_config="", config=None, verbose=True,
                 binary=None, ready_timeout=_READY_TIMEOUT, workdir=None):
        self.binary = binary or find_mosquitto()
        if self.binary is None:
            raise BrokerUnsupported("mosquitto is not installed (apt-get install mosquitto)")
        super().__init__(host, port, ready_timeout, workdir)
        self.config_path = os.path.join(self.workdir, "mosquitto.conf")
        if passwords is not None and password_file is not None:
            raise ValueError("give passwords or password_file, not both")
        if acl is not None and acl_file is not None:
            raise ValueError("give acl or acl_file, not both")
        if passwords is not None:
            password_file = write_password_file(os.path.join(self.workdir, "passwd"), passwords)
        if acl is not None:
            acl_file = os.path.join(self.workdir, "acl")
            with open(acl_file, "w") as f:
                f.write(acl)
        if anonymous is None:
            anonymous = password_file is None
        self.anonymous = anonymous
        self.password_file = password_file
        self.acl_file = acl_file
        self.tls = tls
        self.plain = plain
        if persistence is True:
            persistence = os.path.join(self.workdir, "data")
        if persistence:
            os.makedirs(persistence, exist_ok=True)
        self.persistence_dir = persistence or None
        self.extra_config = extra_config
        self.config = config
        self.verbose = verbose
        if tls is not None or (config is not None and "{tls_port}" in config):
            self.tls_port = free_port(host)
        if not plain and tls is None and config is None:
            raise ValueError("a broker needs a plain or a TLS listener")

    def _repick_ports(self):
        self.port = free_port(self.host)
        if self.tls_port is not None:
            self.tls_port = free_port(self.host)

    def _command(self):
        return [self.binary, "-c", self.config_path]

    def _header(self):
        lines = ["# generated by sim/brokers.py for one run"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines += ["# root: files stay in our private temp dir (see sim/brokers.py)",
                      "user root"]
        lines += ["log_dest stderr", "log_timestamp_format %H:%M:%S"]
        lines += ["log_type all"] if self.verbose else [
            "log_type error", "log_type warning", "log_type notice", "log_type information"]
        return lines

    def config_text(self):
        if self.config is not None:
            body = self.config.format(host=self.host, port=self.port, tls_port=self.tls_port,
                                      workdir=self.workdir)
            return "\n".join(self._header()) + "\n" + body + "\n"
        lines = self._header()
        lines.append("allow_anonymous " + _bool(self.anonymous))
        if self.password_file:
            lines.append("password_file " + str(self.password_file))
        if self.acl_file:
            lines.append("acl_file " + str(self.acl_file))
        if self.persistence_dir:
            lines += ["persistence true",
                      "persistence_location " + os.path.join(str(self.persistence_dir), "")]
        else:
            lines.append("persistence false")
        if self.plain:
            lines.append("listener %d %s" % (self.port, self.host))
        if self.tls is not None:
            lines.append("listener %d %s" % (self.tls_port, self.host))
            lines += self.tls.config_lines()
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def _write_config(self):
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.config_text())

    def _probes(self):
        if self.config is not None:
            out = []
            if "{port}" in self.config:
                out.append((self.host, self.port, mqtt_ping if self._plain_in_custom() else tcp_open))
            if "{tls_port}" in self.config:
                out.append((self.host, self.tls_port, tcp_open))
            return out or [(self.host, self.port, mqtt_ping)]
        out = []
        if self.plain:
            out.append((self.host, self.port, mqtt_ping))
        if self.tls is not None:
            # A bare TCP connect: a TLS listener may demand a client certificate.
            out.append((self.host, self.tls_port, tcp_open))
        return out

    def _plain_in_custom(self):
        # In a custom config, {port} is a plain listener unless TLS settings
        # follow it before the next listener line.
        text = self.config
        i = text.find("{port}")
        j = text.find("listener", i)
        section = text[i:] if j < 0 else text[i:j]
        return "certfile" not in section


_AMQTT_SERVE = "--serve-amqtt"


class Amqtt(_ChildBroker):
    """amqtt (pure Python, MQTT 3.1.1) in a child Python process.

    Same interface as Mosquitto, for machines without it. Only anonymous
    access on a plain listener: amqtt has no `%u` ACL patterns, and the
    other features are not needed where this stands in (BrokerUnsupported).
    A child process rather than a thread so it is stopped by pid, restarted
    on the same port, and never shares the test's event loop.
    """

    kind = "amqtt"
    _ready_marker = "amqtt: running"
    _binds_zero = True      # it binds port 0 and prints the port it got

    def __init__(self, host="127.0.0.1", port=None, *, anonymous=None, passwords=None,
                 password_file=None, acl=None, acl_file=None, tls=None, plain=True,
                 persistence=False, extra_config="", config=None, verbose=False,
                 ready_timeout=_READY_TIMEOUT, workdir=None, **_ignored):
        unsupported = [name for name, v in (
            ("passwords", passwords), ("password_file", password_file), ("acl", acl),
            ("acl_file", acl_file), ("tls", tls), ("persistence", persistence),
            ("extra_config", extra_config), ("config", config)) if v]
        if anonymous is False:
            unsupported.append("anonymous=False")
        if not plain:
            unsupported.append("plain=False")
        if unsupported:
            raise BrokerUnsupported("amqtt stand-in does not support: " + ", ".join(unsupported))
        if not amqtt_available():
            raise BrokerUnsupported("amqtt is not installed (pip install amqtt)")
        super().__init__(host, port, ready_timeout, workdir)
        self.verbose = verbose

    def reload(self):
        raise BrokerUnsupported("amqtt has no reload (and SIGHUP would end it)")

    def _env(self):
        # The child runs in the broker's folder: it finds `sim` through
        # PYTHONPATH, the folder holding it (a checkout, or inside the
        # installed pile_companion: docs/ARCHITECTURE.md), not the parent's.
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def _command(self):
        # -m, not the file path: run as a script from host/, host/platform.py
        # would shadow the standard library's `platform` in the child.
        return [sys.executable, "-m", "sim.brokers", _AMQTT_SERVE,
                json.dumps({"host": self.host, "port": self.port, "verbose": self.verbose})]


def make_broker(prefer="mosquitto", **opts):
    """Mosquitto if installed (or prefer='amqtt'), else amqtt; not started."""
    if prefer == "mosquitto" and mosquitto_available():
        return Mosquitto(**opts)
    if amqtt_available():
        return Amqtt(**opts)
    if mosquitto_available():
        return Mosquitto(**opts)
    raise BrokerUnsupported("no MQTT broker: install mosquitto or amqtt")


def _in_use(text):
    return "already in use" in text.lower()


def stop_process(proc, sig=signal.SIGTERM, timeout=_STOP_TIMEOUT):
    """Stop a child (subprocess.Popen) by its pid: `sig`, then SIGKILL if it
    has not ended within `timeout` s. Nothing if it has ended already."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def _stop_child(state, kill=False, timeout=_STOP_TIMEOUT):
    proc, state["proc"] = state["proc"], None
    if proc is not None:
        stop_process(proc, signal.SIGKILL if kill else signal.SIGTERM, timeout)
    log, state["log"] = state["log"], None
    if log is not None:
        log.close()


def _cleanup(state):
    # Also reached at interpreter exit or garbage collection: a test that
    # forgot close() must not leave a broker or a temp dir behind.
    _stop_child(state)
    path, state["rmdir"] = state["rmdir"], None
    if path:
        shutil.rmtree(path, ignore_errors=True)


def _serve_amqtt(args):
    import asyncio
    import logging
    from amqtt.broker import Broker

    opts = json.loads(args)
    logging.basicConfig(level=logging.DEBUG if opts["verbose"] else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")

    async def run():
        broker = Broker({
            "listeners": {"default": {"type": "tcp",
                                      "bind": "%s:%d" % (opts["host"], opts["port"])}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                        {"allow_anonymous": True}},
        })
        try:
            await broker.start()
        except Exception as e:  # reported through the log and the exit code
            print("amqtt: error: %s" % e, file=sys.stderr, flush=True)
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # Port 0 asked: the port the listener got. amqtt keeps its asyncio
        # server per listener in _servers (no public accessor in 0.11/0.12).
        port = broker._servers["default"].instance.sockets[0].getsockname()[1]
        print("amqtt: running on %s:%d" % (opts["host"], port), file=sys.stderr, flush=True)
        await stop.wait()
        await broker.shutdown()
        return 0

    return asyncio.run(run())


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == _AMQTT_SERVE:
    sys.exit(_serve_amqtt(sys.argv[2]))
