"""A NATS cluster for tests, benches and the chaos harness: nats-server
nodes with their MQTT listeners and JetStream, on loopback ports, each a
child process stopped by its pid (docs/scaling.md); and the site security
of the shipped Mosquitto ACL as NATS accounts and permissions
(docs/mqtt-security.md "The same rules on a NATS cluster").

    from sim.nats import NatsCluster
    with NatsCluster(users={"A": pw, "platform": pw2}, acl=open("host/mosquitto/acl").read()) as c:
        c.urls; c.kill(0); c.start_node(0)
"""
import json
import os
import shutil
import socket
import tempfile
import time

from sim.brokers import (_POLL, _START_TRIES, BrokerError, BrokerUnsupported, _ChildBroker,
                         _in_use, _recv_exact, free_port)


def find_nats_server():
    """Path of nats-server (Debian installs it in /usr/sbin), or None."""
    return shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/local/bin/nats-server") if os.access(p, os.X_OK)),
        None)


class NatsNode(_ChildBroker):
    """One nats-server of a NatsCluster: its MQTT listener (the port this
    class probes), a cluster route port, JetStream in its own folder (MQTT
    sessions and QoS 1 messages live there, replicated on every node)."""

    kind = "nats"
    _ready_marker = "Server is ready"

    def __init__(self, name, port, route_port, peers, workdir, accounts=""):
        _ChildBroker.__init__(self, port=port, workdir=workdir)
        self.name = name
        self.route_port = route_port
        self.peers = peers                  # the other nodes' route ports
        self.accounts = accounts            # an `accounts { }` block, or ""
        self.conf = os.path.join(self.workdir, "nats.conf")

    def _command(self):
        return [find_nats_server(), "-c", self.conf]

    def _write_config(self):
        routes = ", ".join("nats-route://127.0.0.1:%d" % p for p in self.peers)
        # 0600: the accounts block holds the users' passwords.
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.accounts)
            f.write("server_name: %s\n"
                    "listen: 127.0.0.1:-1\n"            # NATS clients: not used here
                    "jetstream { store_dir: \"%s\", max_memory_store: 64MB, "
                    "max_file_store: 256MB }\n"
                    "cluster { name: pc, listen: 127.0.0.1:%d, routes: [%s] }\n"
                    "mqtt { listen: 127.0.0.1:%d, stream_replicas: %d }\n"
                    % (self.name, os.path.join(self.workdir, "js"), self.route_port, routes,
                       self.port, len(self.peers) + 1))


def _subjects(topic):
    # An MQTT topic filter as NATS subjects (its MQTT listener maps `/` to
    # `.`, `+` to `*`, `#` to `>`). `a/#` also matches `a` itself in MQTT.
    out = [".".join({"+": "*", "#": ">"}.get(w, w) for w in topic.split("/"))]
    if topic.endswith("/#"):
        out.append(out[0][:-2])
    return out


def acl_rules(acl_text, user):
    """(publish, subscribe) subject lists a Mosquitto ACL grants `user`:
    every `pattern` line with %u as the user, and the `topic` lines of the
    user's own `user` section. The one source of the site security for
    Mosquitto (acl_file) and NATS (nats_accounts)."""
    pub, sub = [], []
    section = None
    for line in acl_text.splitlines():
        words = line.split()     # Mosquitto has whole-line comments only
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "user":
            section = words[1]
            continue
        if words[0] not in ("pattern", "topic"):
            raise BrokerError("ACL line %r: only user / topic / pattern lines are mirrored" % line)
        access, topic = (words[1], words[2]) if len(words) == 3 else ("readwrite", words[1])
        if words[0] == "topic" and section != user:
            continue
        subjects = _subjects(topic.replace("%u", user))
        if access in ("write", "readwrite"):
            pub += subjects
        if access in ("read", "readwrite"):
            sub += subjects
    return pub, sub


def nats_accounts(users, acl_text):
    """An `accounts { }` block for nats-server: one account (PC, with
    JetStream: the MQTT sessions live there) holding every user, each one
    allowed exactly what the Mosquitto ACL allows it (acl_rules); anything
    else is denied. A site's bridge (user = site id) publishes and reads
    only its own tree, and can neither confirm a bill nor command a pile."""
    if acl_text is None:
        raise ValueError("NATS users need the ACL they mirror (host/mosquitto/acl)")
    entries = []
    for name, pw in users.items():
        if not name or any(c in name for c in " ./+#*>\"\n") or '"' in pw or "\\" in pw:
            raise ValueError("bad NATS user %r or password" % name)
        pub, sub = acl_rules(acl_text, name)
        # $MQTT.sub.>: where JetStream delivers a QoS 1 subscription's
        # messages to its MQTT session (without it no QoS 1 subscription
        # works). MQTT connections only: on the NATS protocol that subject
        # would show other sessions' deliveries.
        entries.append('      {user: "%s", password: "%s", allowed_connection_types: ["MQTT"], '
                       'permissions: {publish: {allow: %s}, subscribe: {allow: %s}}}'
                       % (name, pw, json.dumps(pub or ["_NONE_"]),
                          json.dumps(sub + ["$MQTT.sub.>"])))
    return "accounts {\n  PC {\n    jetstream: enabled\n    users: [\n%s\n    ]\n  }\n}\n" % (
        "\n".join(entries))


class NatsCluster:
    """A 3-node (by default) NATS cluster with its MQTT listeners, on
    loopback ports, each node a child process stopped by its pid. nats-server
    binds the ports it is given (the nodes must know each other's route
    ports beforehand): they are picked here, and the whole cluster is tried
    again on new ports when one was taken meanwhile (bounded).

        with NatsCluster() as c:
            c.urls            # ["mqtt://127.0.0.1:P1", ...]: mqtt.url as a list
            c.kill(1); c.start_node(1)
    """

    def __init__(self, nodes=3, ready_timeout=30.0, users=None, acl=None):
        if find_nats_server() is None:
            raise BrokerUnsupported("nats-server is not installed (apt-get install nats-server; "
                                    "tools/setup.sh does)")
        # users {name: password} with `acl` (Mosquitto ACL text, e.g.
        # host/mosquitto/acl): the site security of docs/mqtt-security.md,
        # as NATS accounts and permissions (nats_accounts). None: anonymous.
        self.accounts = nats_accounts(users, acl) if users is not None else ""
        self._login = next(iter(users.items())) if users else None
        self.n = nodes
        self.ready_timeout = ready_timeout
        self.workdir = tempfile.mkdtemp(prefix="pc-nats-")
        self.nodes = []

    @property
    def urls(self):
        return [n.url for n in self.nodes]

    def start(self):
        for attempt in range(_START_TRIES):
            ports = [free_port() for _ in range(2 * self.n)]
            if len(set(ports)) < len(ports):
                continue
            mqtt, routes = ports[:self.n], ports[self.n:]
            self.nodes = []
            for i in range(self.n):
                d = os.path.join(self.workdir, "n%d" % (i + 1))
                os.makedirs(d, exist_ok=True)
                self.nodes.append(NatsNode("n%d" % (i + 1), mqtt[i], routes[i],
                                           [p for j, p in enumerate(routes) if j != i], d,
                                           self.accounts))
            # All spawned before any is awaited: JetStream needs a quorum
            # before a node serves MQTT.
            for node in self.nodes:
                node.ready_timeout = self.ready_timeout
                node._write_config()
                node._spawn()
            errs = [node._await_ready() for node in self.nodes]
            if not any(errs) and self._login is not None:
                # An account's first MQTT login creates its session streams
                # (seconds, on 3 replicas): done here, so that a client's
                # first connect is not the one to wait (and time out).
                errs = [_await_login(self.nodes[0], self._login, self.ready_timeout)]
            if not any(errs):
                return self
            for node in self.nodes:
                node.stop(kill=True)
            if any(_in_use(e) for e in errs if e) and attempt + 1 < _START_TRIES:
                continue
            raise BrokerError("nats cluster did not start: %s\n--- logs ---\n%s" % (
                "; ".join("%s: %s" % (n.name, e) for n, e in zip(self.nodes, errs) if e),
                "\n".join(n.log_text()[-1500:] for n in self.nodes)))
        raise BrokerError("nats cluster did not start: ports kept being taken")

    def kill(self, i):
        """SIGKILL node i by its pid (a crash)."""
        self.nodes[i].stop(kill=True)

    def start_node(self, i):
        """Start node i again on its ports and files; returns once it serves."""
        node = self.nodes[i]
        node._write_config()
        node._spawn()
        err = node._await_ready()
        if err:
            raise BrokerError("nats node %s did not restart: %s" % (node.name, err))

    def index_of(self, url):
        return self.urls.index(url)

    def close(self):
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def _await_login(node, login, timeout):
    """None once `login` (user, password) gets CONNACK 0 from node, else a reason."""
    user, pw = (x.encode() for x in login)

    def field(b):
        return len(b).to_bytes(2, "big") + b
    body = field(b"MQTT") + b"\x04\xc2\x00\x0a" + field(b"pc-warmup") + field(user) + field(pw)
    pkt = b"\x10" + bytes([len(body)]) + body
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((node.host, node.port), timeout=10) as s:
                s.sendall(pkt)
                ack = _recv_exact(s, 4)
                if ack is not None and ack[0] == 0x20 and ack[3] == 0:
                    s.sendall(b"\xe0\x00")
                    return None
                last = "CONNACK %r" % (ack,)
        except OSError as e:
            last = str(e)
        time.sleep(_POLL * 5)
    return "user %s not logged in within %.0f s: %s" % (login[0], timeout, last)
