# Firmware push from the bridge (issue 8): the `upgrade` MQTT command and the
# `pile-bridge push` CLI. The pile side is firmware/remote.py + upgrade.py,
# the image format and codes protocol/image.py;
# the frames are fw_control 0xE8 (signed on a keyed pile), fw_chunk 0xEA
# (never signed: the image is authenticated as a whole) and fw_reply 0xE7.
# docs/upgrade.md "Pushing from the bridge" is the reference.
#
#   begin (version, size, sha256, mac)  -> offset: 0, or where a broken transfer stopped
#   chunk(offset) ... from the offset each fw_reply names
#   verify                               -> stage verified
#   activate, again every activate_retry_s while the pile is busy charging
#   the pile reboots; at its next login: status -> installed (running) or rolled_back
#
# A dropped link or a timeout during the transfer does not fail the push:
# it waits (upgrade.reconnect_wait_s) for the pile to log in again, announces
# the same image and continues from the offset the pile reports.
import argparse
import asyncio
import base64
import binascii
import hashlib
import json
import os
import socket
import ssl
import sys
import time

from protocol import image as U
from protocol.fields import wire_version
from protocol.image import FW_NO_KEY, FW_NO_REBOOT
from protocol.sign import upgrade_mac

from host import commands as C
from host.mqtt import wait_event
from host import config as configmod
from host.links import LinkClosed
from host.piles import CommandTimeout, SignedReject
from host.topics import Topics

OP_BEGIN, OP_VERIFY, OP_ACTIVATE, OP_ABORT, OP_STATUS = (U.FW_BEGIN, U.FW_VERIFY, U.FW_ACTIVATE,
                                                      U.FW_ABORT, U.FW_STATUS)
_R_BUSY = U.REASONS.index(U.R_BUSY)
_MAX_STALLS = 5          # consecutive broken attempts without progress before giving up


def reason_name(code):
    if code == FW_NO_KEY:
        return "no upgrade key on this pile"
    if code == FW_NO_REBOOT:
        return "the pile cannot reboot itself"
    if 0 < code < len(U.REASONS):
        return U.REASONS[code]
    return "result %d" % code


def stage_name(code):
    return U.STAGES[code] if 0 <= code < len(U.STAGES) else "stage %d" % code


class PushFailed(Exception):
    def __init__(self, code, message, reply=None):
        Exception.__init__(self, message)
        self.code = code
        self.message = message
        self.reply = reply


def load_image(cfg, a):
    """The image bytes of an `upgrade` command: `image_b64`, or the file
    `image` names inside upgrade.image_dir."""
    u = cfg["upgrade"]
    if a.get("image_b64") is not None:
        data = a["image_b64"]
    else:
        d = u["image_dir"]
        if not d:
            raise C.CommandError("unsupported", "upgrade.image_dir is not configured: send the "
                                 "image inline as image_b64, or configure the folder")
        path = os.path.join(d, a["image"])
        try:
            with open(path, "rb") as f:
                data = f.read(u["max_image_bytes"] + 1)
        except OSError as e:
            raise C.CommandError("bad_request", "cannot read image %r from upgrade.image_dir: %s"
                                 % (a["image"], e.strerror or e))
    if not data:
        raise C.CommandError("bad_request", "the image is empty")
    if len(data) > u["max_image_bytes"]:
        raise C.CommandError("bad_request", "image larger than upgrade.max_image_bytes (%d)"
                             % u["max_image_bytes"])
    return data


class Push:
    def __init__(self, bridge, pile, req_id, image, version, activate=True):
        self.b = bridge
        self.pile = pile
        self.code = pile.code
        self.req_id = req_id
        self.image = image
        self.version = wire_version(version)
        self.activate = activate
        self.u = bridge.cfg["upgrade"]
        self.sha = hashlib.sha256(image).digest()
        self.bytes_sent = 0
        self.resumed = []        # offsets a broken transfer resumed from
        self._last_stage = None
        self._pct = -1

    # --- reporting ------------------------------------------------------------------

    def _state(self, stage, offset=None):
        st = self.pile.upgrade
        st["stage"] = stage
        if offset is not None:
            st["offset"] = offset
        st["updated_at"] = time.time()
        self.b.publish_status(self.pile)

    def _event(self, stage, message, **kw):
        self._last_stage = stage
        self.b.event(self.code, "firmware", message, stage=stage, id=self.req_id,
                     version=self.version, size=len(self.image), **kw)

    def _stage_seen(self, f):
        # Every stage the pile reports, once per change, as an event. The
        # end of a push (failed, rolled_back) is one event, from run_command,
        # with the result's code and message.
        name = stage_name(f["stage"])
        if name != self._last_stage and name not in (U.FAILED, U.ROLLED_BACK):
            self._event(name, "pile %s: firmware %s %s" % (self.code, self.version, name),
                        offset=f["offset"], result=f["result"], reason=reason_name(f["result"])
                        if f["result"] else None)

    def _progress(self, offset):
        pct = offset * 10 // len(self.image)
        if pct != self._pct:
            self._pct = pct
            self._state("downloading", offset)
        else:
            self.pile.upgrade["offset"] = offset

    # --- link -------------------------------------------------------------------

    async def _online(self):
        deadline = time.monotonic() + self.u["reconnect_wait_s"]
        while self.pile.conn is None:
            ev = self.pile.login_event
            left = deadline - time.monotonic()
            if left <= 0:
                raise PushFailed("offline", "pile %s did not come back within %g s; staged up to "
                                 "offset %d (a new push resumes there)"
                                 % (self.code, self.u["reconnect_wait_s"],
                                    self.pile.upgrade.get("offset", 0)))
            await wait_event(ev, left)
        return self.pile.conn

    async def _control(self, op):
        conn = self.pile.conn
        if conn is None:
            raise LinkClosed("pile %s offline" % self.code)
        v = {"pile": self.code, "op": op, "version": "", "size": 0, "sha256": "", "mac": ""}
        if op == OP_BEGIN:
            mac = upgrade_mac(self.b.keys.upgrade_key(), self.version, len(self.image), self.sha)
            v.update({"version": self.version, "size": len(self.image),
                      "sha256": _hex(self.sha), "mac": _hex(mac)})
        f = (await conn.request("fw_control", v)).fields
        if op != OP_BEGIN:      # begin is reported by transfer(), with its offset
            self._stage_seen(f)
        return f

    def _refused(self, what, f):
        raise PushFailed("refused", "pile %s refused %s: %s (stage %s)"
                         % (self.code, what, reason_name(f["result"]), stage_name(f["stage"])),
                         dict(f, reason=reason_name(f["result"]), stage_name=stage_name(f["stage"])))

    # --- the push -----------------------------------------------------------------

    async def transfer(self):
        """begin + chunks + verify, across broken links. Returns at verified."""
        n = len(self.image)
        chunk = self.u["chunk_bytes"]
        stalls = 0
        first = True
        best = -1
        while True:
            await self._online()
            try:
                f = await self._control(OP_BEGIN)
                if f["result"]:
                    self._refused("the image announcement", f)
                offset = f["offset"]
                if not first:
                    self.resumed.append(offset)
                self._event("downloading", "pile %s: %s firmware %s (%d bytes) from offset %d"
                            % (self.code, "resuming" if not first else "sending", self.version,
                               n, offset), offset=offset, resumed=not first)
                first = False
                self._state("downloading", offset)
                while offset < n:
                    data = self.image[offset:offset + chunk]
                    conn = self.pile.conn
                    if conn is None:
                        raise LinkClosed("pile %s offline" % self.code)
                    r = (await conn.request("fw_chunk", {"pile": self.code, "offset": offset,
                                                         "data": data})).fields
                    self.bytes_sent += len(data)
                    if r["result"]:
                        self._stage_seen(r)
                        self._refused("a chunk at offset %d" % offset, r)
                    offset = r["offset"]
                    if offset > best:
                        best = offset
                        stalls = 0
                    self._progress(offset)
                f = await self._control(OP_VERIFY)
                if f["result"] or stage_name(f["stage"]) != U.VERIFIED:
                    self._refused("the image at verify", f)
                self._state("verified", n)
                return
            except (LinkClosed, CommandTimeout) as e:
                stalls += 1
                if stalls > _MAX_STALLS:
                    raise PushFailed("link_lost", "transfer to pile %s broke %d times without "
                                     "progress: %s" % (self.code, stalls, e))
                self._event("link_lost", "pile %s: transfer interrupted at offset %s (%s); "
                            "resuming when the pile is back" % (self.code,
                                                                self.pile.upgrade.get("offset"), e),
                            offset=self.pile.upgrade.get("offset"))
                if self.pile.conn is not None and isinstance(e, LinkClosed):
                    await asyncio.sleep(0.1)    # the old link is being torn down

    async def install(self):
        """activate when idle, wait for the reboot, check what runs."""
        deadline = time.monotonic() + self.u["activate_wait_s"]
        told_busy = False
        stalls = 0
        while True:
            await self._online()
            ev = self.pile.login_event        # the login after the activation reboot
            try:
                f = await self._control(OP_ACTIVATE)
            except (LinkClosed, CommandTimeout) as e:
                # The activation may have run and the pile rebooted before
                # answering: ask where it stands once it is back.
                stalls += 1
                if stalls > _MAX_STALLS:
                    raise PushFailed("link_lost", "activation on pile %s: %s" % (self.code, e))
                await self._online()
                f = await self._control(OP_STATUS)
                if stage_name(f["stage"]) in (U.INSTALLED, U.ROLLED_BACK):
                    return await self._check_running(f)
                continue
            if f["result"] == _R_BUSY:
                if not told_busy:
                    told_busy = True
                    self._event("waiting_idle", "pile %s is charging: firmware %s activates when "
                                "it is idle" % (self.code, self.version))
                    self._state("verified")
                if time.monotonic() > deadline:
                    raise PushFailed("busy", "pile %s was busy for %g s; firmware %s stays "
                                     "verified (send upgrade again to activate)"
                                     % (self.code, self.u["activate_wait_s"], self.version), dict(f))
                await asyncio.sleep(self.u["activate_retry_s"])
                continue
            if f["result"] or stage_name(f["stage"]) != U.INSTALLED:
                self._refused("the activation", f)
            self._state("installed")
            if not await wait_event(ev, self.u["reboot_wait_s"]):
                raise PushFailed("timeout", "firmware %s installed on pile %s, but the pile did not "
                                 "log in again within %g s" % (self.version, self.code,
                                                               self.u["reboot_wait_s"]))
            f = None
            for _ in range(3):
                try:
                    f = await self._control(OP_STATUS)
                    break
                except (LinkClosed, CommandTimeout):
                    await self._online()
            if f is None:
                raise PushFailed("timeout", "pile %s back after the upgrade but its status "
                                 "does not come" % self.code)
            return await self._check_running(f)

    async def _check_running(self, f):
        stage = stage_name(f["stage"])
        running = (self.pile.login or {}).get("sw_version")
        # named like _refused's reply, with the version the pile logged in with
        reply = dict(f, stage_name=stage, reason=reason_name(f["result"]) if f["result"] else None,
                     running=running)
        if stage == U.ROLLED_BACK:
            self._state("rolled_back")
            raise PushFailed("rolled_back", "firmware %s never became healthy on pile %s: it "
                             "rolled back to %s" % (self.version, self.code, running), reply)
        if stage != U.INSTALLED or running != self.version:
            self._state("failed")
            raise PushFailed("failed", "pile %s runs %s after the upgrade to %s (stage %s)"
                             % (self.code, running, self.version, stage), reply)
        self._state("running")
        self._event("running", "pile %s runs firmware %s" % (self.code, self.version))
        return running

    async def run(self):
        self.pile.upgrade = {"id": self.req_id, "version": self.version, "size": len(self.image),
                             "sha256": _hex(self.sha), "offset": 0, "stage": "starting",
                             "started_at": time.time()}
        try:
            await self.transfer()
            if not self.activate:
                return "verified", None
            return "running", await self.install()
        except SignedReject as e:
            self._state("failed")
            raise PushFailed("signed_reject", str(e), e.reply())
        except PushFailed:
            if self.pile.upgrade["stage"] not in ("rolled_back", "failed"):
                self._state("failed")
            raise

    def summary(self):
        return {"version": self.version, "size": len(self.image), "sha256": _hex(self.sha),
                "bytes_sent": self.bytes_sent, "resumed_from": list(self.resumed)}


async def run_command(bridge, pile, req_id, a):
    """The `upgrade` MQTT command; one result when the push is over."""
    if bridge.keys.upgrade_key() is None:
        raise C.CommandError("unsupported", "no upgrade key: set keys.upgrade_key_file to sign "
                             "firmware announcements (docs/upgrade.md)")
    if not pile.ext:
        raise C.CommandError("unsupported", "firmware push needs our firmware (ext: false)")
    image = load_image(bridge.cfg, a)
    t = pile.upgrade_task
    if t is not None and not t.done():
        raise C.CommandError("busy", "pile %s is already being upgraded (request %s)"
                             % (pile.code, (pile.upgrade or {}).get("id")))
    p = Push(bridge, pile, req_id, image, a["version"], a["activate"])
    pile.upgrade_task = asyncio.ensure_future(p.run())
    try:
        stage, running = await asyncio.shield(pile.upgrade_task)
    except PushFailed as e:
        kw = {}
        if e.reply and "stage_name" in e.reply:     # what the pile last reported
            kw = {"result": e.reply.get("result"), "reason": e.reply.get("reason"),
                  "offset": e.reply.get("offset")}
        p._event("failed" if e.code != "rolled_back" else "rolled_back", e.message, code=e.code,
                 **kw)
        return bridge._fail(pile.code, req_id, "upgrade", e.code, e.message, e.reply,
                            **p.summary())
    if stage == "verified":
        return bridge._ok(pile.code, req_id, "upgrade", "firmware %s staged and verified on pile "
                          "%s; not activated (activate: false)" % (p.version, pile.code),
                          **p.summary())
    return bridge._ok(pile.code, req_id, "upgrade", "pile %s runs firmware %s" % (pile.code, running),
                      {"running": running}, **p.summary())


def _hex(b):
    return binascii.hexlify(b).decode().upper()


# --- pile-bridge push: the technician's entry point ------------------------------------

def arg_parser():
    p = argparse.ArgumentParser(
        prog="pile-bridge push",
        description="Push a firmware image to one pile through the running bridge: publishes "
                    "an `upgrade` command on the site's MQTT broker, prints every stage the "
                    "pile reports and the final result. Exit 0 when the pile runs the new "
                    "version. See docs/upgrade.md.")
    p.add_argument("image", help="image file (tools: protocol.image.pack_image); inside "
                   "upgrade.image_dir it is sent by name, elsewhere inline (base64)")
    p.add_argument("-c", "--config", required=True, help="the bridge's TOML config (site, broker)")
    p.add_argument("--pile", required=True, help="pile code (14 digits)")
    p.add_argument("--version", required=True, dest="fw_version",
                   help="the image's version (8 characters on the wire, e.g. 209.5.0)")
    p.add_argument("--no-activate", action="store_true", help="stage and verify only")
    p.add_argument("--mqtt-username", help="MQTT user for this tool (default: the config's). "
                   "With the shipped broker config use a technician/platform account, not the "
                   "bridge's own: the broker takes the user name as client id")
    p.add_argument("--mqtt-password-file")
    p.add_argument("--cert", help="client certificate for mqtts://")
    p.add_argument("--key", help="client key for mqtts://")
    p.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    return p


def _client(cfg, ident):
    import aiomqtt
    m = cfg["mqtt"]
    tls, host, port, _, _ = configmod.parse_mqtt_url(m["url"])
    user, pw = configmod.mqtt_credentials(cfg)
    ctx = None
    if tls:
        ctx = ssl.create_default_context(cafile=m["ca_file"] or None)
        if m["cert_file"]:
            ctx.load_cert_chain(m["cert_file"], m["key_file"] or None)
        if m["tls_insecure"]:
            ctx.check_hostname = False
    return aiomqtt.Client(host, port, username=user, password=pw, identifier=ident,
                          tls_context=ctx, clean_session=True,
                          socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])


def build_command(cfg, path, version, activate=True, req_id=None):
    """The `upgrade` command document for image file `path`."""
    req_id = req_id or "push-%d-%d" % (int(time.time()), os.getpid())
    doc = {"id": req_id, "cmd": "upgrade", "version": version, "activate": activate}
    d = cfg["upgrade"]["image_dir"]
    real = os.path.realpath(path)
    if d and os.path.dirname(real) == os.path.realpath(d):
        doc["image"] = os.path.basename(real)
    else:
        with open(path, "rb") as f:
            doc["image_b64"] = base64.b64encode(f.read()).decode()
        size = len(json.dumps(doc))
        if size > cfg["mqtt"]["max_command_bytes"]:
            raise configmod.ConfigError("%s is too large to send inline (%d bytes of command, "
                                        "mqtt.max_command_bytes %d): copy it into "
                                        "upgrade.image_dir" % (path, size,
                                                               cfg["mqtt"]["max_command_bytes"]))
    return doc


async def push_via_mqtt(cfg, pile, doc, timeout, out=sys.stdout):
    topics = Topics(cfg.site)
    ident = "pc-push-%s-%d" % (cfg.site, os.getpid())
    async with _client(cfg, ident) as c:
        await c.subscribe(topics.result(pile), qos=1)
        await c.subscribe(topics.base + "/events/" + pile, qos=1)
        await c.publish(topics.command(pile), json.dumps(doc), qos=1)

        async def wait():
            async for m in c.messages:
                d = json.loads(m.payload)
                if d.get("id") != doc["id"]:
                    continue
                if "/result/" in str(m.topic):
                    return d
                print("%s %s" % (d.get("stage", d.get("type")), d.get("message")), file=out,
                      flush=True)
        return await asyncio.wait_for(wait(), timeout)


def main(argv):
    args = arg_parser().parse_args(argv)
    o = {}
    m = {}
    for flag, key in (("mqtt_username", "username"), ("mqtt_password_file", "password_file"),
                      ("cert", "cert_file"), ("key", "key_file")):
        if getattr(args, flag):
            m[key] = getattr(args, flag)
    if m:
        o["mqtt"] = m
    try:
        cfg = configmod.load(args.config, o)
        if not (len(args.pile) == 14 and args.pile.isdigit()):
            raise configmod.ConfigError("--pile: 14 digits, got %r" % args.pile)
        doc = build_command(cfg, args.image, args.fw_version, not args.no_activate)
    except (configmod.ConfigError, OSError) as e:
        print("pile-bridge push: %s" % e, file=sys.stderr)
        return 2
    try:
        res = asyncio.run(push_via_mqtt(cfg, args.pile, doc, args.timeout))
    except asyncio.TimeoutError:
        print("pile-bridge push: no result within %g s (the push may go on in the bridge)"
              % args.timeout, file=sys.stderr)
        return 1
    except Exception as e:      # aiomqtt.MqttError and friends: say it, no traceback
        print("pile-bridge push: %s" % e, file=sys.stderr)
        return 2
    print(json.dumps(res), flush=True)
    return 0 if res.get("ok") else 1
