# pile-bridge configuration: a TOML file (Python's tomllib), then flags on
# top. docs/bridge.md is the reference; every key has a default except
# `site`. Times are seconds (floats allowed, so tests can run fast).
import argparse
import copy
import json
import os
import tomllib
from urllib.parse import unquote, urlsplit

from host import tariff as T
from protocol import p256

DEFAULTS = {
    "site": None,
    "database": "pile-bridge.db",
    "log_level": "info",
    "allow": [],                 # allow-list of pile codes; empty = any pile may log in
    "mqtt": {
        "enabled": True,          # false: no MQTT platform (an OCPP-only site, docs/ocpp.md)
        "url": "mqtt://127.0.0.1:1883",   # mqtts:// for TLS; a list: a broker cluster's nodes, tried in turn
        "username": None,
        "password": None,
        "password_file": None,
        "client_id": None,        # default pc-bridge-<site>
        "ca_file": None,
        "cert_file": None,
        "key_file": None,
        "tls_insecure": False,    # skip the server host name check (never in production)
        "protocol": "3.1.1",      # or "5"
        "keepalive": 30,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 30.0,
        "publish_timeout_s": 10.0,
        "max_command_bytes": 65536,
        "command_max_life_s": 86400.0,  # a signed command's `expires` at most this far ahead
    },
    "bills": {
        "window": 16,             # unconfirmed bills in flight per pile
        "retry_initial_s": 10.0,  # first republication of an unconfirmed bill
        "retry_max_s": 300.0,     # backoff cap
        "extra_wait_s": 2.0,      # how long an ext pile's bill waits for its 0xEB
        "settle_retry_s": 30.0,   # resend 0xE4 settled this often until the pile answers
        "keep_days": 180.0,       # settled bills are forgotten after this (0: keep for ever)
        "overdue_s": 60.0,        # a session seen ending with no bill this long after: bill_overdue
        "mac_wait_s": 10.0,       # a keyed pile's bill waits this long for the 0xEB with its MAC
        "sig_wait_s": 10.0,       # a pile with an ocmf_key: its bill's publication waits this
                                  # long for the OCMF signature (0xDB; custody never waits)
    },
    "piles": {                    # defaults for every pile link
        "heartbeat_s": 10.0,      # the pile's heartbeat period (YKC: 10 s)
        "missed_heartbeats": 3,   # this many periods of silence = offline
        "time_sync_s": 86400.0,   # 0x56 after login and then this often; 0: never
        "command_timeout_s": 10.0,
        "status_poll_s": 300.0,   # ext piles: 0xE6 status query this often (journal, versions)
        "ext": True,              # pile understands our extension frames (0xE1..0xEF)
    },
    "tcp": {
        "listen": None,           # "0.0.0.0:8767": YKC piles dial in here
        "ext": False,             # default for piles that dial in (third-party YKC)
        # Connections that have not logged in (docs/bridge.md "Connection limits"):
        "login_s": 30.0,          # closed if no login within this
        "max_unauthenticated": 256,   # at once, in all; more are closed at once
        "max_per_address": 64,    # at once, per remote address (piles behind one NAT share one)
    },
    "serial": [],                 # [{url, baudrate, ext}]
    "pile": {},                   # per pile code: {ext, name, tariff, model, cmd_key_file, signed,
                                  # power_cap_kw: the site's cap on it, pushed after login (0xDE),
                                  # ocmf_key: its OCMF public key, hex (docs/ocmf.md)}
    "tariff": None,               # the site's default tariff model (host/tariff.py)
    "keys": {                     # docs/security.md "Keys on the bridge"
        "dir": None,              # <dir>/<pile code>.key: that pile's command key (0600)
        "site_key_file": None,    # derive every pile's key (sign.pile_key) from one site key
        "upgrade_key_file": None,  # the site's upgrade key: signs firmware announcements
        "platform_key_file": None,  # set: every platform command must carry its `auth` MAC
    },
    "status": {                   # the site status page (docs/status.md)
        "listen": None,           # "127.0.0.1:8080" (port 0: any free port, printed in the ready line)
        "password_file": None,    # HTTP Basic password (any user name)
        "tls_cert_file": None,    # serve HTTPS with this certificate ...
        "tls_key_file": None,     # ... and key
        "client_ca_file": None,   # HTTPS: require a client certificate signed by this CA
    },
    "upgrade": {                  # firmware push (docs/upgrade.md "Pushing from the bridge")
        "image_dir": None,        # `upgrade` commands name images in this folder
        "chunk_bytes": 200,       # fw_chunk data per frame (the frame holds at most 200)
        "max_image_bytes": 1048576,
        "reconnect_wait_s": 600.0,   # a broken transfer waits this long for the pile to return
        "activate_retry_s": 30.0,    # activation refused as busy: ask again this often
        "activate_wait_s": 3600.0,   # ... for at most this long
        "reboot_wait_s": 600.0,      # after activation: wait this long for the new login
    },
    "ocpp": {                     # the OCPP uplink (docs/ocpp.md); off while csms_url is unset
        "csms_url": None,         # ws://host:port/path or wss://...; the station id (pile code) is appended
        "version": "2.0.1",       # or "1.6" (1.6J)
        "security_profile": 0,    # 0 none, 1 basic auth, 2 TLS + basic auth, 3 TLS + client cert
        "password_file": None,    # profiles 1-2: the basic-auth password (user: the station id)
        "ca_file": None,          # profiles 2-3: the CSMS's CA
        "cert_file": None,        # profile 3: the station's certificate ...
        "key_file": None,         # ... and key
        "mode": "never-drop",     # or "strict": at most message_attempts tries per message
        "message_attempts": 3,    # strict mode (OCPP 2.0.1 MessageAttempts)
        "retry_initial_s": 1.0,   # a message not answered is sent again after this, doubling ...
        "retry_max_s": 60.0,      # ... up to this
        "response_timeout_s": 30.0,
        "reconnect_min_s": 0.5,
        "reconnect_max_s": 30.0,
        "heartbeat_s": 300.0,     # until the CSMS's BootNotification answer says otherwise
        "meter_interval_s": 60.0,  # TransactionEvent(Updated) / MeterValues at most this often per gun
        "vendor": "pile-companion",
        # A card / VIN start (0x31) is authorised by the CSMS (Authorize); with
        # the CSMS unreachable: the local list if local_authorize_offline, then
        # any id if offline_unknown_ids (OCPP LocalAuthorizeOffline /
        # AllowOfflineTxForUnknownId; the CSMS can change both per station).
        "local_authorize_offline": True,
        "offline_unknown_ids": False,
        "volts": 230,             # charging profiles in A: W = A x volts x phases
        "rated_kw": None,         # third-party piles: a profile's cap as 0x52 % of this
        "max_queued": 10000,      # per pile: this many messages unanswered -> new starts refused (0: no cap)
    },
    "versions": {                 # minimum versions, by pile model ("*": any model)
        "min_board": {},          # e.g. {"*" = "209.04.00", "ac" = "3.1"}
        "min_hmi": {},            # e.g. {"*" = "103"}
    },
}

_FREE_TABLES = ("pile", "min_board", "min_hmi")   # tables whose keys are data, not config keys
_EPOCH_2000 = 946684800       # 2000-01-01T00:00:00Z in unix seconds


class ConfigError(ValueError):
    pass


def _merge(base, over, path=""):
    for k, v in over.items():
        if k not in base:
            raise ConfigError("unknown config key %s%s" % (path, k))
        if isinstance(base[k], dict) and k not in _FREE_TABLES and isinstance(v, dict):
            _merge(base[k], v, path + k + ".")
        else:
            base[k] = v


class Config(dict):
    """The effective configuration (a dict with the DEFAULTS shape);
    `source` is the file it was read from (None: defaults and flags)."""

    source = None

    @property
    def site(self):
        return self["site"]

    def pile_ext(self, code, link_ext=None):
        p = self["pile"].get(code, {})
        if "ext" in p:
            return bool(p["ext"])
        if link_ext is not None:
            return bool(link_ext)
        return bool(self["piles"]["ext"])

    def allowed(self, code):
        allow = self["allow"]
        return not allow or code in allow

    def model(self, code, login=None):
        """The pile's model for minimum versions: `pile.<code>.model`, else
        "dc" / "ac" from the login's pile_type, else None."""
        m = self["pile"].get(code, {}).get("model")
        if m:
            return m
        t = (login or {}).get("pile_type")
        return {0: "dc", 1: "ac"}.get(t)

    def min_versions(self, code, login=None):
        """{"board": version or None, "hmi": version or None} this pile must run."""
        model = self.model(code, login)
        out = {}
        for what in ("board", "hmi"):
            table = self["versions"]["min_" + what]
            out[what] = table.get(model) if model in table else table.get("*")
        return out


def load(path=None, overrides=None):
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError("%s: %s" % (path, e))
        try:
            _merge(cfg, data)
        except ConfigError as e:
            raise ConfigError("%s: %s" % (path, e))
    if overrides:
        _merge(cfg, overrides)
    try:
        c = validate(Config(cfg))
    except ConfigError as e:
        # Every config error names the file (and, in its message, the key).
        if path and not str(e).startswith(str(path)):
            raise ConfigError("%s: %s" % (path, e))
        raise
    c.source = path
    return c


def check_files(cfg):
    """The files the MQTT link needs, checked once at start: a missing CA,
    certificate or key is a config error naming the key and the config
    file, not a connect retried forever ("[Errno 2]")."""
    m = cfg["mqtt"]
    where = getattr(cfg, "source", None)
    for k in ("ca_file", "cert_file", "key_file", "password_file"):
        f = m.get(k)
        if f and not os.access(f, os.R_OK):
            raise ConfigError("%smqtt.%s: %s: %s" % (
                where + ": " if where else "", k,
                "cannot be read" if os.path.exists(f) else "no such file", f))


def validate(cfg):
    site = cfg["site"]
    if not isinstance(site, str) or not site or any(c in site for c in "/+#$ ") or len(site) > 64:
        raise ConfigError("site must be a non-empty id without / + # $ or spaces, got %r" % (site,))
    for code in list(cfg["allow"]) + list(cfg["pile"]):
        if not (isinstance(code, str) and len(code) == 14 and code.isdigit()):
            raise ConfigError("pile codes are 14 digits (YKC BCD7), got %r" % (code,))
    if cfg["tariff"] is not None:
        try:
            cfg["tariff"] = T.parse(cfg["tariff"])
        except T.TariffError as e:
            raise ConfigError("tariff: %s" % e)
    for code, p in cfg["pile"].items():
        unknown = set(p) - {"ext", "name", "tariff", "model", "cmd_key_file", "signed", "bind",
                            "power_cap_kw", "ocmf_key"}
        if unknown:
            raise ConfigError("pile.%s: unknown key(s) %s" % (code, ", ".join(sorted(unknown))))
        if p.get("tariff") is not None:
            try:
                p["tariff"] = T.parse(p["tariff"])
            except T.TariffError as e:
                raise ConfigError("pile.%s.tariff: %s" % (code, e))
        if p.get("cmd_key_file") is not None:
            load_key_file(p["cmd_key_file"], "pile.%s.cmd_key_file" % code)
        cap = p.get("power_cap_kw")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float))
                                or not 0 < cap < 4294967):
            raise ConfigError("pile.%s.power_cap_kw: a number of kW above 0, got %r" % (code, cap))
        if "signed" in p and not isinstance(p["signed"], bool):
            raise ConfigError("pile.%s.signed must be true or false" % code)
        if "bind" in p:
            p["bind"] = parse_bind(p["bind"], "pile.%s.bind" % code)
        if p.get("ocmf_key") is not None:
            p["ocmf_key"] = parse_ocmf_key(p["ocmf_key"], "pile.%s.ocmf_key" % code)
    k = cfg["keys"]
    for name in ("site_key_file", "upgrade_key_file", "platform_key_file"):
        if k[name] is not None:
            load_key_file(k[name], "keys." + name)
    if k["dir"] is not None and not os.path.isdir(k["dir"]):
        raise ConfigError("keys.dir %s is not a folder" % k["dir"])
    u = cfg["upgrade"]
    if u["image_dir"] is not None and not os.path.isdir(u["image_dir"]):
        raise ConfigError("upgrade.image_dir %s is not a folder" % u["image_dir"])
    if not (isinstance(u["chunk_bytes"], int) and 1 <= u["chunk_bytes"] <= 200):
        raise ConfigError("upgrade.chunk_bytes must be an integer 1..200 (fw_chunk holds 200)")
    for what in ("min_board", "min_hmi"):
        for model, v in cfg["versions"][what].items():
            if not isinstance(v, str) or version_key(v) is None:
                raise ConfigError("versions.%s.%s: %r is not a version with numbers "
                                  "(e.g. \"209.04.00\")" % (what, model, v))
    serial = []
    for s in cfg["serial"]:
        if isinstance(s, str):
            s = {"url": s}
        if not isinstance(s, dict) or not s.get("url"):
            raise ConfigError("serial entries need a url")
        unknown = set(s) - {"url", "baudrate", "ext"}
        if unknown:
            raise ConfigError("serial %s: unknown key(s) %s" % (s["url"], ", ".join(sorted(unknown))))
        serial.append({"url": s["url"], "baudrate": int(s.get("baudrate", 115200)),
                       "ext": s.get("ext")})
    cfg["serial"] = serial
    if cfg["tcp"]["listen"]:
        parse_hostport(cfg["tcp"]["listen"])
    m = cfg["mqtt"]
    urls = m["url"] if isinstance(m["url"], list) else [m["url"]]
    if not urls or not all(isinstance(u, str) for u in urls):
        raise ConfigError("mqtt.url is a broker URL or a list of them (a cluster's nodes)")
    for u in urls:
        parse_mqtt_url(u)
    m["urls"] = urls              # the failover order (host/mqtt.py)
    m["url"] = urls[0]
    o = cfg["ocpp"]
    if o["csms_url"] is not None:
        if not (isinstance(o["csms_url"], str) and o["csms_url"].startswith(("ws://", "wss://"))):
            raise ConfigError("ocpp.csms_url must start with ws:// or wss://, got %r" % (o["csms_url"],))
        if o["version"] not in ("2.0.1", "1.6"):
            raise ConfigError("ocpp.version is \"2.0.1\" or \"1.6\"")
        if o["mode"] not in ("never-drop", "strict"):
            raise ConfigError("ocpp.mode is \"never-drop\" or \"strict\"")
        if o["security_profile"] not in (0, 1, 2, 3):
            raise ConfigError("ocpp.security_profile is 0, 1, 2 or 3")
        if o["security_profile"] in (1, 2) and not o["password_file"]:
            raise ConfigError("ocpp.security_profile %d needs ocpp.password_file" % o["security_profile"])
        if o["security_profile"] >= 2 and not o["csms_url"].startswith("wss://"):
            raise ConfigError("ocpp.security_profile %d needs a wss:// csms_url" % o["security_profile"])
        if o["security_profile"] == 3 and not (o["cert_file"] and o["key_file"]):
            raise ConfigError("ocpp.security_profile 3 needs ocpp.cert_file and ocpp.key_file")
        if o["password_file"]:
            read_secret_file(o["password_file"], "ocpp.password_file")
        if not (isinstance(o["message_attempts"], int) and o["message_attempts"] >= 1):
            raise ConfigError("ocpp.message_attempts must be an integer >= 1")
        for name in ("local_authorize_offline", "offline_unknown_ids"):
            if not isinstance(o[name], bool):
                raise ConfigError("ocpp.%s must be true or false" % name)
        if isinstance(o["volts"], bool) or not isinstance(o["volts"], (int, float)) \
                or not 0 < o["volts"] <= 1500:
            raise ConfigError("ocpp.volts must be a voltage above 0 (at most 1500), got %r"
                              % (o["volts"],))
        if isinstance(o["max_queued"], bool) or not isinstance(o["max_queued"], int) \
                or o["max_queued"] < 0:
            raise ConfigError("ocpp.max_queued must be an integer >= 0 (0: no cap)")
        r = o["rated_kw"]
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or r <= 0):
            raise ConfigError("ocpp.rated_kw must be a power in kW above 0, got %r" % (r,))
    elif not m["enabled"]:
        raise ConfigError("no uplink: mqtt.enabled is false and ocpp.csms_url is unset")
    if m["protocol"] not in ("3.1.1", "5"):
        raise ConfigError("mqtt.protocol is \"3.1.1\" or \"5\"")
    if cfg["piles"]["time_sync_s"] < 0:
        raise ConfigError("piles.time_sync_s must be >= 0 (0: never set the piles' clocks)")
    if cfg["piles"]["missed_heartbeats"] < 1:
        raise ConfigError("piles.missed_heartbeats must be >= 1")
    if cfg["bills"]["window"] < 1:
        raise ConfigError("bills.window must be >= 1")
    st = cfg["status"]
    if st["listen"]:
        host, _ = parse_hostport(st["listen"])
        for k in ("password_file", "tls_cert_file", "tls_key_file", "client_ca_file"):
            if st[k] is not None and not os.path.isfile(st[k]):
                raise ConfigError("status.%s: no such file: %s" % (k, st[k]))
        if bool(st["tls_cert_file"]) != bool(st["tls_key_file"]):
            raise ConfigError("status.tls_cert_file and status.tls_key_file go together")
        if st["client_ca_file"] and not st["tls_cert_file"]:
            raise ConfigError("status.client_ca_file needs status.tls_cert_file (HTTPS)")
        if host not in ("127.0.0.1", "::1", "localhost") and not (
                st["password_file"] or st["client_ca_file"]):
            raise ConfigError("status.listen %s is reachable beyond this machine: set "
                              "status.password_file or status.client_ca_file" % st["listen"])
    from host.store import COMMANDS_KEEP_S
    life = m["command_max_life_s"]
    if not (isinstance(life, (int, float)) and 0 < life <= COMMANDS_KEEP_S):
        raise ConfigError("mqtt.command_max_life_s must be > 0 and at most %d s (command ids are "
                          "remembered that long: the replay window)" % COMMANDS_KEEP_S)
    if not m["client_id"]:
        m["client_id"] = "pc-bridge-" + site
    return cfg


def read_secret_file(path, what):
    """The first line of a secret file, stripped (ConfigError naming it)."""
    try:
        with open(path) as f:
            v = f.readline().strip()
    except OSError as e:
        raise ConfigError("%s %s: %s" % (what, path, e.strerror or e))
    if not v:
        raise ConfigError("%s %s is empty" % (what, path))
    return v


def parse_ocmf_key(v, what):
    """A pile's OCMF public key (the console's `key`: DER SubjectPublicKeyInfo
    in hex, or the bare point 04|X|Y): the 65-byte point."""
    try:
        if not isinstance(v, str):
            raise ValueError("a hex string")
        return p256.point_from_der_or_raw(bytes.fromhex(v.replace(" ", "").replace(":", "")))
    except ValueError as e:
        raise ConfigError("%s: %s (the pile's console shows it: pile-console URL key), got %r"
                          % (what, e, v))


# --- binding a pile to its links ---------------------------------------------------

def parse_bind(v, what):
    """`bind`: the links a pile may log in on: IP addresses or networks (its
    TCP peer's address) and "serial:URL" (a serial port of the bridge).
    Returns a tuple of ipaddress networks and "serial:" strings."""
    import ipaddress
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v:
        raise ConfigError("%s: a list of addresses, networks or \"serial:URL\"" % what)
    out = []
    for e in v:
        if isinstance(e, str) and e.startswith("serial:") and len(e) > 7:
            out.append(e)
            continue
        try:
            out.append(ipaddress.ip_network(e, strict=False))
        except (TypeError, ValueError):
            raise ConfigError("%s: %r is neither an IP address or network nor \"serial:URL\""
                              % (what, e))
    return tuple(out)


def bind_allows(bind, link):
    """True when `link` (its name, "tcp:IP:PORT" or "serial:URL") is one of
    the pile's bound links."""
    import ipaddress
    name = link.name
    if name.startswith("serial:"):
        return name in bind
    ip = getattr(link, "peer_ip", None)
    try:
        addr = ipaddress.ip_address(ip)
    except (TypeError, ValueError):
        return False
    if getattr(addr, "ipv4_mapped", None) is not None:
        addr = addr.ipv4_mapped
    return any(not isinstance(b, str) and addr.version == b.version and addr in b for b in bind)


# --- keys --------------------------------------------------------------------------

def load_key_file(path, what="key file"):
    """A 32-byte key from `path` (64 hex digits or 32 raw bytes, as
    protocol/sign.load_key reads them). Refused when the file is readable or
    writable by group or others: keys are the bridge user's alone (0600)."""
    from protocol import sign
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError("%s: %s" % (what, e))
    if st.st_mode & 0o077:
        raise ConfigError("%s %s has mode %04o: a key file must be readable by the bridge's "
                          "user only (chmod 600 %s)" % (what, path, st.st_mode & 0o777, path))
    try:
        return sign.load_key(path)
    except (OSError, ValueError) as e:
        raise ConfigError("%s %s: %s" % (what, path, e))


class KeyRing:
    """The bridge's keys (never in the config dump, the MQTT traffic or the
    log). A pile's command key, first found wins: `pile.<code>.cmd_key_file`;
    `<keys.dir>/<code>.key`; derived from `keys.site_key_file` (unless the pile
    has `signed = false`). No key: the pile gets its commands bare."""

    def __init__(self, cfg):
        self.cfg = cfg
        k = cfg["keys"]
        self._site = load_key_file(k["site_key_file"], "keys.site_key_file") \
            if k["site_key_file"] else None
        self._upgrade = load_key_file(k["upgrade_key_file"], "keys.upgrade_key_file") \
            if k["upgrade_key_file"] else None
        self._platform = load_key_file(k["platform_key_file"], "keys.platform_key_file") \
            if k["platform_key_file"] else None
        self._cache = {}

    def cmd_key(self, code):
        """The pile's command key (bytes) or None. A key file that appears in
        keys.dir later is picked up at the pile's next command."""
        key = self._cache.get(code)
        if key is not None:
            return key
        p = self.cfg["pile"].get(code, {})
        if p.get("signed") is False:
            return None
        if p.get("cmd_key_file"):
            key = load_key_file(p["cmd_key_file"], "pile.%s.cmd_key_file" % code)
        elif self.cfg["keys"]["dir"] and os.path.exists(os.path.join(self.cfg["keys"]["dir"],
                                                                      code + ".key")):
            key = load_key_file(os.path.join(self.cfg["keys"]["dir"], code + ".key"),
                                "keys.dir key")
        elif self._site is not None:
            from protocol import sign
            key = sign.pile_key(self._site, code)
        if key is not None:
            self._cache[code] = key
        return key

    def upgrade_key(self):
        return self._upgrade

    def platform_key(self):
        """The key platform commands are checked with (None: not checked)."""
        return self._platform


def version_key(v):
    """protocol.image.version_key: the one version rule."""
    from protocol.image import version_key as vk
    return vk(v)


def below(version, minimum):
    """True when `version` is older than `minimum`, or cannot be read."""
    if minimum is None:
        return False
    v = version_key(version)
    m = version_key(minimum)
    if v is None:
        return True
    n = max(len(v), len(m))
    return v + (0,) * (n - len(v)) < m + (0,) * (n - len(m))


def counter_floor(now=None):
    """The command counter's time floor: seconds since 2000-01-01 UTC
    (docs/security.md host policy: counter = max(last + 1, now))."""
    import time
    return int((time.time() if now is None else now) - _EPOCH_2000)


def parse_hostport(s, default_port=None):
    host, sep, port = s.rpartition(":")
    if not sep:
        host, port = s, default_port
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise ConfigError("expected HOST:PORT, got %r" % s)
    return host.strip("[]") or "0.0.0.0", port


def parse_mqtt_url(url):
    """(tls, host, port, username, password) from mqtt[s]://[user[:pw]@]host[:port]."""
    u = urlsplit(url)
    if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ConfigError("mqtt.url must start with mqtt:// or mqtts://, got %r" % url)
    tls = u.scheme in ("mqtts", "ssl")
    try:
        port = u.port or (8883 if tls else 1883)
    except ValueError:
        raise ConfigError("bad port in %r" % url)
    if not u.hostname:
        raise ConfigError("no host in %r" % url)
    user = unquote(u.username) if u.username else None
    pw = unquote(u.password) if u.password else None
    return tls, u.hostname, port, user, pw


def mqtt_credentials(cfg):
    """(username, password): the URL, then keys, then password_file, then the
    environment variable PILE_BRIDGE_MQTT_PASSWORD (keeps it off argv)."""
    m = cfg["mqtt"]
    _, _, _, user, pw = parse_mqtt_url(m["url"])
    user = m["username"] or user
    pw = m["password"] or pw
    if m["password_file"]:
        with open(m["password_file"]) as f:
            pw = f.read().strip()
    if pw is None:
        pw = os.environ.get("PILE_BRIDGE_MQTT_PASSWORD")
    return user, pw


def _serial_flag(s):
    # URL[,baudrate=N][,ext=true|false]
    parts = s.split(",")
    out = {"url": parts[0]}
    for p in parts[1:]:
        k, _, v = p.partition("=")
        if k == "baudrate":
            out["baudrate"] = int(v)
        elif k == "ext":
            out["ext"] = v.lower() in ("1", "true", "yes", "on")
        else:
            raise argparse.ArgumentTypeError("unknown serial option %r" % k)
    return out


def arg_parser():
    p = argparse.ArgumentParser(
        prog="pile-bridge",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Site bridge between YKC V1.6 charging piles (serial, TCP) and an MQTT "
                    "platform: takes custody of bills in SQLite, publishes them until the "
                    "platform confirms, relays commands. See docs/bridge.md.",
        epilog="subcommands:\n"
               "  pile-bridge push -c site.toml --pile CODE --version V IMAGE\n"
               "        a firmware image to a pile through the running bridge (docs/upgrade.md)\n"
               "  pile-bridge migrate-site -c site.toml --from OLD\n"
               "        move the store to the config's site id (after renaming a site)\n"
               "each has its own --help.\n\n"
               "exit status: 0 ok, 1 refused or failed, 2 usage or config error (one line naming "
               "the key and the file), 3 cannot reach")
    p.add_argument("-c", "--config", help="TOML config file (docs/bridge.md)")
    p.add_argument("--site", help="site id: topics live under pc/<site>/")
    p.add_argument("--db", help="SQLite database path")
    p.add_argument("--mqtt", metavar="URL", help="broker, mqtt://[user@]host[:port] or mqtts://...")
    p.add_argument("--mqtt-username")
    p.add_argument("--mqtt-password-file", help="file holding the MQTT password "
                   "(or set PILE_BRIDGE_MQTT_PASSWORD)")
    p.add_argument("--client-id")
    p.add_argument("--ca", help="CA file for mqtts://")
    p.add_argument("--cert", help="client certificate (PEM) for mqtts://")
    p.add_argument("--key", help="client key (PEM) for mqtts://")
    p.add_argument("--tls-insecure", action="store_true", help="do not check the server host name")
    p.add_argument("--tcp", metavar="HOST:PORT", help="listen for YKC piles dialling in")
    p.add_argument("--serial", metavar="URL[,baudrate=N][,ext=BOOL]", action="append",
                   type=_serial_flag, help="pile on a serial port / pyserial URL (repeatable)")
    p.add_argument("--allow", metavar="PILE", action="append",
                   help="allow only these pile codes to log in (repeatable)")
    p.add_argument("--heartbeat", type=float, metavar="S", help="pile heartbeat period, s")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--print-config", action="store_true",
                   help="print the effective configuration as JSON and exit")
    from host import cli
    cli.common(p, log_level=None)
    return p


def from_args(argv=None):
    args = arg_parser().parse_args(argv)
    o = {}
    m = {}
    if args.site:
        o["site"] = args.site
    if args.db:
        o["database"] = args.db
    if args.log_level:
        o["log_level"] = args.log_level
    if args.allow:
        o["allow"] = args.allow
    if args.mqtt:
        # --mqtt URL[,URL...]: a cluster's nodes, tried in turn
        m["url"] = args.mqtt.split(",") if "," in args.mqtt else args.mqtt
    for flag, key in (("mqtt_username", "username"), ("mqtt_password_file", "password_file"),
                      ("client_id", "client_id"), ("ca", "ca_file"), ("cert", "cert_file"),
                      ("key", "key_file")):
        if getattr(args, flag):
            m[key] = getattr(args, flag)
    if args.tls_insecure:
        m["tls_insecure"] = True
    if m:
        o["mqtt"] = m
    if args.tcp:
        o["tcp"] = {"listen": args.tcp}
    if args.serial:
        o["serial"] = args.serial
    if args.heartbeat:
        o["piles"] = {"heartbeat_s": args.heartbeat}
    cfg = load(args.config, o)
    return cfg, args


def dump(cfg):
    safe = copy.deepcopy(dict(cfg))
    m = safe["mqtt"]
    if m.get("password"):
        m["password"] = "***"
    def masked(url):
        u = urlsplit(url)
        return url.replace(":" + u.password + "@", ":***@", 1) if u.password else url
    m["url"] = masked(m["url"])
    m["urls"] = [masked(u) for u in m.get("urls") or []]
    return json.dumps(safe, indent=2, sort_keys=True)
