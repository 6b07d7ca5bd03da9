"""pile-mqtt-site: the CA, certificates and passwords of a pile-companion broker.

    pile-mqtt-site init --dir DIR --server-name mqtt.example.com [--server-ip IP]
    pile-mqtt-site add-site SITE --dir DIR          # a site bridge's credentials
    pile-mqtt-site add-platform NAME --dir DIR      # another platform user
    pile-mqtt-site remove NAME --dir DIR            # lock a user out
    pile-mqtt-site conf --dir DIR [--port 8883]     # host/mosquitto/site.conf for DIR

Layout of DIR (what goes where: docs/mqtt-security.md):

    ca/ca.key           CA private key, 0600 -- move it offline after init
    ca/ca.crt           CA certificate (also DIR/ca.crt)
    ca.crt server.crt server.key passwd acl     -> the broker, /etc/mosquitto/pc
    clients/<user>/     <user>.crt <user>.key password ca.crt  -> that client

Keys are created 0600 (umask 077 while openssl runs), directories 0700.
Certificates and keys come from the `openssl` command line (EC P-256),
password hashes from `mosquitto_passwd`; no password or key ever appears on
a command line.
"""
import argparse
import os
import sys
from host import cli
from host.mqtt_site import PLATFORM_USER, Pki, SiteError, check_name, render_conf


def _parser():
    ap = argparse.ArgumentParser(prog="pile-mqtt-site", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--dir", required=True, help="the broker's PKI directory")
        p.add_argument("--ca-key", help="CA private key, when kept offline (default DIR/ca/ca.key)")

    p = sub.add_parser("init", help="new CA, server certificate, ACL and platform user")
    common(p)
    p.add_argument("--server-name", action="append", default=[],
                   help="DNS name clients use for the broker (repeatable)")
    p.add_argument("--server-ip", action="append", default=[],
                   help="IP address clients use for the broker (repeatable)")
    p.add_argument("--platform-user", default=PLATFORM_USER)
    p.add_argument("--ca-name", help="CA common name")

    for name, help_ in (("add-site", "credentials for a site's bridge (user = site id)"),
                        ("add-platform", "credentials for another platform user")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("name")
        p.add_argument("--renew", action="store_true", help="replace existing credentials")
        common(p)

    p = sub.add_parser("server", help="issue a new server certificate (names changed, renewal)")
    common(p)
    p.add_argument("--server-name", action="append", default=[])
    p.add_argument("--server-ip", action="append", default=[])

    p = sub.add_parser("remove", help="delete a user's password: it cannot log in any more")
    p.add_argument("name")
    common(p)

    p = sub.add_parser("conf", help="print site.conf for this directory")
    common(p)
    p.add_argument("--port", type=int, default=8883)
    p.add_argument("--bind", help="listen on this address only")
    cli.common(ap, log_level="warning")
    return ap


def main(argv=None):
    args = _parser().parse_args(argv)
    cli.setup_logging(args)
    pki = Pki(args.dir, args.ca_key)
    try:
        if args.cmd == "init":
            files = pki.init(args.server_name, args.server_ip, args.platform_user, args.ca_name)
            print("CA, server certificate, passwd and acl in %s" % pki.root)
            print("platform user %r: %s" % (args.platform_user, os.path.dirname(files["cert"])))
            print("now move %s offline (pass --ca-key to sign later)" % pki.ca_key)
        elif args.cmd == "add-site":
            files = pki.add_user(check_name(args.name), args.renew)
            print("site %r: give %s to its bridge (user %s, topics pc/%s/#)"
                  % (args.name, os.path.dirname(files["cert"]), args.name, args.name))
            print("reload the broker (kill -HUP) to read the new passwd")
        elif args.cmd == "add-platform":
            files = pki.add_platform(args.name, args.renew)
            print("platform user %r: %s; reload the broker (kill -HUP)"
                  % (args.name, os.path.dirname(files["cert"])))
        elif args.cmd == "server":
            if not args.server_name and not args.server_ip:
                raise SiteError("give at least one --server-name or --server-ip")
            pki.make_server(args.server_name, args.server_ip)
            print("new %s; restart the broker to use it" % pki.server_crt)
        elif args.cmd == "remove":
            pki.remove(args.name)
            print("%r removed from %s; reload the broker (kill -HUP)" % (args.name, pki.passwd))
        elif args.cmd == "conf":
            sys.stdout.write(render_conf(pki.root, args.port, args.bind))
        return 0
    except SiteError as e:
        print("pile-mqtt-site: error: %s" % e, file=sys.stderr)
        return 2
    except OSError as e:
        print("pile-mqtt-site: error: %s: %s" % (e.filename or "", e.strerror or e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
