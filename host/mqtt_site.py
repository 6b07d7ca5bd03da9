# A site's MQTT security (pile-mqtt-site, docs/mqtt-security.md): the site's CA and
# certificates, broker users and passwords, and the Mosquitto config
# rendered from host/mosquitto/. The command line is tools/mqtt_site.py.
import os
import re
import secrets
import shutil
import subprocess
import tempfile


TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "host", "mosquitto")
INSTALL_DIR = "/etc/mosquitto/pc"  # the paths written in the shipped site.conf
CA_DAYS = 3650
CERT_DAYS = 825  # the longest validity most TLS clients accept for a leaf
PLATFORM_USER = "platform"
# A site id is one topic level and a user name: no MQTT wildcards, no '/'.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_CURVE = "prime256v1"


class SiteError(Exception):
    """A one-line reason the command cannot go on."""


def check_name(name, what="site id"):
    if not _NAME.match(name or ""):
        raise SiteError("%s %r: 1-64 letters, digits, '_', '-', '.', starting with a "
                        "letter or digit (it becomes a topic level and a user name)"
                        % (what, name))
    return name


def _tool(name):
    path = shutil.which(name) or next(
        (p for p in ("/usr/bin/" + name, "/usr/sbin/" + name) if os.access(p, os.X_OK)), None)
    if path is None:
        raise SiteError("%s not found: install it (apt-get install %s)"
                        % (name, "openssl" if name == "openssl" else "mosquitto"))
    return path


def _run(argv, stdin=None):
    old = os.umask(0o077)  # every file openssl creates starts private
    try:
        r = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
    finally:
        os.umask(old)
    if r.returncode != 0:
        msg = (r.stderr or r.stdout).strip().splitlines()
        raise SiteError("%s failed: %s" % (os.path.basename(argv[0]), msg[-1] if msg else r.returncode))
    return r.stdout


def _private_dir(path):
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _write_private(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


class Pki:
    """A broker's PKI directory (see the module docstring for its layout)."""

    def __init__(self, root, ca_key=None):
        self.root = os.path.abspath(root)
        self.ca_key = os.path.abspath(ca_key) if ca_key else os.path.join(self.root, "ca", "ca.key")
        self.ca_crt = os.path.join(self.root, "ca.crt")
        self.server_crt = os.path.join(self.root, "server.crt")
        self.server_key = os.path.join(self.root, "server.key")
        self.passwd = os.path.join(self.root, "passwd")
        self.acl = os.path.join(self.root, "acl")

    def client_dir(self, user):
        return os.path.join(self.root, "clients", user)

    def client_files(self, user):
        d = self.client_dir(user)
        return {"cert": os.path.join(d, user + ".crt"), "key": os.path.join(d, user + ".key"),
                "password": os.path.join(d, "password"), "ca": os.path.join(d, "ca.crt")}

    # -- creation
    def init(self, server_names, server_ips=(), platform_user=PLATFORM_USER, ca_name=None):
        check_name(platform_user, "platform user")
        if not server_names and not server_ips:
            raise SiteError("give at least one --server-name (or --server-ip): clients check it")
        if os.path.exists(self.ca_crt) or os.path.exists(self.ca_key):
            raise SiteError("%s already holds a CA; use another --dir (init never overwrites)"
                            % self.root)
        _private_dir(self.root)
        _private_dir(os.path.dirname(self.ca_key))
        self._make_ca(ca_name or "pile-companion MQTT CA " + os.path.basename(self.root))
        self.make_server(server_names, server_ips)
        _write_private(self.passwd, "")
        with open(os.path.join(TEMPLATE_DIR, "acl")) as f:
            acl = f.read()
        _write_private(self.acl, acl.replace("user platform\n", "user %s\n" % platform_user))
        return self.add_user(platform_user)

    def _make_ca(self, name):
        openssl = _tool("openssl")
        _run([openssl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:" + _CURVE,
              "-out", self.ca_key])
        _run([openssl, "req", "-x509", "-new", "-key", self.ca_key, "-sha256",
              "-days", str(CA_DAYS), "-subj", "/CN=" + _subj(name), "-out", self.ca_crt,
              "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign",
              "-addext", "subjectKeyIdentifier=hash"])
        shutil.copyfile(self.ca_crt, os.path.join(os.path.dirname(self.ca_key), "ca.crt"))
        os.chmod(self.ca_crt, 0o644)

    def make_server(self, names=(), ips=()):
        san = ["DNS:" + n for n in names] + ["IP:" + ip for ip in ips]
        self._issue(self.server_key, self.server_crt, (names or ips)[0], "serverAuth", san)

    def add_user(self, user, renew=False):
        """Client certificate + random password for user; returns its files."""
        check_name(user, "user")
        files = self.client_files(user)
        exists = _passwd_has(self.passwd, user)
        if exists and not renew:
            raise SiteError("user %r already exists (--renew issues a new certificate and "
                            "password)" % user)
        if not os.path.exists(self.passwd):
            raise SiteError("%s has no passwd file: run init first" % self.root)
        _private_dir(os.path.join(self.root, "clients"))
        _private_dir(os.path.dirname(files["cert"]))
        self._issue(files["key"], files["cert"], user, "clientAuth")
        shutil.copyfile(self.ca_crt, files["ca"])
        password = secrets.token_urlsafe(24)
        _write_private(files["password"], password + "\n")
        _set_password(self.passwd, user, password)
        return files

    def add_platform(self, user, renew=False):
        """Another platform user: a certificate, a password and the platform's
        ACL rights (read pc/#, write commands and confirmations)."""
        files = self.add_user(user, renew)
        with open(self.acl) as f:
            acl = f.read()
        if ("\nuser %s\n" % user) not in acl:
            with open(self.acl, "a") as f:
                f.write("\nuser %s\ntopic read pc/#\ntopic write pc/+/cmd/#\n"
                        "topic write pc/+/confirm/#\n" % user)
        return files

    def remove(self, user):
        """Delete user's password: it can no longer log in (certificate or not)."""
        check_name(user, "user")
        if not _passwd_has(self.passwd, user):
            raise SiteError("no user %r in %s" % (user, self.passwd))
        _run([_tool("mosquitto_passwd"), "-D", self.passwd, user])

    def _issue(self, key, crt, cn, usage, san=()):
        if not os.path.exists(self.ca_key):
            raise SiteError("CA key not found at %s: mount the offline copy and pass --ca-key"
                            % self.ca_key)
        openssl = _tool("openssl")
        _run([openssl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:" + _CURVE,
              "-out", key])
        with tempfile.TemporaryDirectory(prefix="pc-pki-") as tmp:
            csr, ext = os.path.join(tmp, "req.csr"), os.path.join(tmp, "ext.cnf")
            _run([openssl, "req", "-new", "-key", key, "-subj", "/CN=" + _subj(cn), "-out", csr])
            lines = ["basicConstraints=critical,CA:FALSE",
                     "keyUsage=critical,digitalSignature,keyEncipherment",
                     "extendedKeyUsage=" + usage,
                     "authorityKeyIdentifier=keyid",
                     "subjectKeyIdentifier=hash"]
            if san:
                lines.append("subjectAltName=" + ",".join(san))
            with open(ext, "w") as f:
                f.write("\n".join(lines) + "\n")
            # A random serial: no serial file to keep in step beside the CA key.
            _run([openssl, "x509", "-req", "-in", csr, "-CA", self.ca_crt, "-CAkey", self.ca_key,
                  "-set_serial", "0x" + secrets.token_hex(16), "-sha256",
                  "-days", str(CERT_DAYS), "-extfile", ext, "-out", crt])
        os.chmod(key, 0o600)
        os.chmod(crt, 0o644)


def _subj(text):
    # openssl -subj syntax: '/' and '=' separate fields; keep names plain.
    return re.sub(r"[/=\\]", "_", text)


def _passwd_has(path, user):
    try:
        with open(path) as f:
            return any(line.split(":", 1)[0] == user for line in f)
    except OSError:
        return False


def _set_password(path, user, password):
    """Add or replace user's hash in a mosquitto password file.

    mosquitto_passwd -U hashes a file of "user:plain" lines in place, so the
    password goes through a private temp file, never through argv.
    """
    tool = _tool("mosquitto_passwd")
    with tempfile.TemporaryDirectory(prefix="pc-pw-") as tmp:
        plain = os.path.join(tmp, "one")
        _write_private(plain, "%s:%s\n" % (user, password))
        _run([tool, "-U", plain])
        with open(plain) as f:
            hashed = f.read().strip()
    with open(path) as f:
        lines = [l for l in f.read().splitlines() if l and l.split(":", 1)[0] != user]
    lines.append(hashed)
    _write_private(path + ".new", "\n".join(lines) + "\n")
    os.replace(path + ".new", path)


def render_conf(pki_dir, port=8883, bind=None, template=None):
    """host/mosquitto/site.conf with DIR for /etc/mosquitto/pc and the listener set."""
    if template is None:
        with open(os.path.join(TEMPLATE_DIR, "site.conf")) as f:
            template = f.read()
    text = template.replace(INSTALL_DIR + "/", os.path.join(os.path.abspath(pki_dir), ""))
    listener = "listener %s%s" % (port, " " + bind if bind else "")
    text, n = re.subn(r"(?m)^listener 8883$", listener, text)
    if n != 1:
        raise SiteError("site.conf template has no 'listener 8883' line")
    return text
