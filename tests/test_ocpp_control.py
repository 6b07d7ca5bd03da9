# What a CSMS controls through the OCPP uplink, against the real CSMS
# (tools/ocpp_csms.py, the `ocpp` library's own classes): C01 Authorize of a
# card or VIN start at the pile (0x31 -> Authorize -> 0x32) with the offline
# rules, K01/K10 charging profiles down to the power the pile's sharing
# commands (0xDE), B05/B06 (2.0.1 Get/SetVariables) and 1.6 Get/Change-
# Configuration, D01/D02 the local list (-> the pile's VIN list), B02/B03
# boot Pending / Rejected. Named after the use cases (docs/ocpp.md lists them).
import contextlib
import os
import types

from protocol.router import on, reply
from sim.links import TcpTransport
from sim.testkit import ScriptedPile, make_bill, make_extra
from tools.ocpp_csms import Csms
from tests.test_bridge_helpers import (
    PILE_A, FirmwarePile, bridge_running, connect_pile, in_tempdir, pty_pair, run, tempdir,
    until)
from tests.test_ocpp_uplink import ocpp_config

CARD = "00000000D14B0A54"       # the card number in 0x31 and the bill (8 bytes)
UID = "D14B0A54"                # the card's UID, as the CSMS knows it
VIN = "LSVAU2180N2183294"


def control_config(tmp, csms, ocpp=None, **over):
    return ocpp_config(tmp, csms, over=over, **(ocpp or {}))


async def up(csms, timeout=20):
    """The station is accepted and has sent its statuses (its link is in use)."""
    await csms.wait_for(lambda: PILE_A in csms.stations and any(
        s[0] == PILE_A for s in csms.statuses), timeout=timeout, what="station up")


@contextlib.asynccontextmanager
async def station_up(tmp, version="2.0.1", pile_cls=ScriptedPile, pile_kw=None, over=None, **ocpp):
    """The CSMS, an OCPP-only bridge and a scripted pile logged in, its
    station accepted: .csms, .bridge, .pile, .cp (the CSMS's side), .cfg."""
    async with Csms(version=version) as csms:
        cfg = ocpp_config(tmp, csms, over=over, version=version, **ocpp)
        async with bridge_running(cfg, mqtt_up=False) as b:
            p = pile_cls(PILE_A, await TcpTransport.connect("127.0.0.1", b.tcp_port),
                         **(pile_kw or {}))
            assert await p.login() == 0
            try:
                await up(csms)
                yield types.SimpleNamespace(csms=csms, bridge=b, pile=p, cp=csms.stations[PILE_A],
                                            cfg=cfg)
            finally:
                await p.close()


def start_request(card=CARD, vin="0" * 17, start_type=1, gun="01"):
    return {"pile": PILE_A, "gun": gun, "start_type": start_type, "need_password": 0,
            "card": card, "password": "0" * 32, "vin": vin}


async def ask(p, **kw):
    """0x31 from the pile; the bridge's 0x32 answer."""
    return (await p.request("start_request", start_request(**kw), "start_auth", timeout=10)).fields


def test_C01_a_card_and_a_vin_start_at_the_pile_are_authorised_by_the_csms():
    async def scenario(tmp):
        async with station_up(tmp) as s:
            csms, p = s.csms, s.pile
            csms.id_tokens = {UID: "Accepted", VIN: "Blocked"}
            # A known card: Accepted -> 0x32 ok with a new trade serial
            # and no balance limit at the pile (the CSMS bills).
            a = await ask(p)
            assert a["ok"] == 1 and a["serial"].startswith(PILE_A + "01"), a
            assert a["balance"] == 0xFFFFFFFF
            assert csms.authorized[-1] == (PILE_A, UID, "ISO14443", "Accepted")
            # Its transaction starts at the CSMS with that idToken.
            serial = a["serial"]
            await p.realtime(status=3, serial=serial, energy=100)
            await csms.wait_for(lambda: (serial, 0) in csms.unique, what="Started")
            started = csms.unique[(serial, 0)][2]
            assert started["trigger_reason"] == "Authorized"
            assert started["id_token"] == {"id_token": UID, "type": "ISO14443"}
            # An unknown card: refused, YKC reason 1 (no such account).
            a = await ask(p, card="0000000011223344")
            assert (a["ok"], a["reason"], a["serial"]) == (0, 1, "0" * 32)
            # A VIN start: the VIN as an idToken of its own (type Local,
            # additionalInfo VIN); Blocked -> reason 2.
            a = await ask(p, card="0" * 16, vin=VIN, start_type=3)
            assert (a["ok"], a["reason"]) == (0, 2)
            assert csms.authorized[-1] == (PILE_A, VIN, "Local", "Blocked")
    in_tempdir("ocpp-auth-card", scenario)


def test_C01_offline_the_local_list_decides_and_unknown_ids_only_when_allowed():
    from ocpp.v201 import call

    async def scenario(tmp):
        csms = await Csms().start()
        cfg = control_config(tmp, csms)
        try:
            async with bridge_running(cfg, mqtt_up=False) as b:
                p = await connect_pile(PILE_A, b.tcp_port)
                await up(csms)
                cp = csms.stations[PILE_A]
                # D01: the CSMS sends a local list: a card and a VIN.
                r = await cp.call(call.SendLocalList(version_number=3, update_type="Full",
                                                     local_authorization_list=[
                    {"id_token": {"id_token": UID, "type": "ISO14443"},
                     "id_token_info": {"status": "Accepted"}},
                    {"id_token": {"id_token": VIN, "type": "Local"},
                     "id_token_info": {"status": "Accepted"}}]))
                assert r.status == "Accepted"
                # Its VINs reach our firmware's VIN list (0xEE).
                await p.wait_for(lambda: [v["vin"] for v in p.vins] == [VIN])
                r = await cp.call(call.GetLocalListVersion())
                assert r.version_number == 3
                # The CSMS goes away: the local list authorises, unknown ids are refused.
                await csms.stop()
                await until(lambda: not b.ocpp.connected(PILE_A), what="link down")
                a = await ask(p)
                assert a["ok"] == 1, a
                a = await ask(p, card="0000000011223344")
                assert (a["ok"], a["reason"]) == (0, 1)
                assert [e for e in csms.authorized] == []
                await p.close()
            # After a restart the list is still there (stored), and with
            # offline_unknown_ids an unknown card may start too.
            cfg["ocpp"]["offline_unknown_ids"] = True
            async with bridge_running(cfg, mqtt_up=False) as b:
                assert b.ocpp.local_list(PILE_A)["version"] == 3
                p = await connect_pile(PILE_A, b.tcp_port)
                a = await ask(p, card="0000000011223344")
                assert a["ok"] == 1, a
                await p.close()
        finally:
            await csms.stop()
    in_tempdir("ocpp-auth-offline", scenario)


def test_C01_16_authorize_and_D01_local_list_on_16():
    from ocpp.v16 import call

    async def scenario(tmp):
        async with station_up(tmp, "1.6") as s:
            csms, p, cp = s.csms, s.pile, s.cp
            csms.id_tokens = {"D14B0A54": "Accepted"}
            a = await ask(p)
            assert a["ok"] == 1 and csms.authorized[-1] == (PILE_A, "D14B0A54", None, "Accepted")
            # Its StartTransaction carries the idTag the CSMS authorised.
            await p.realtime(status=3, serial=a["serial"], energy=100)
            await csms.wait_for(lambda: [v for v in csms.unique.values() if v[1] == "Started"],
                                what="StartTransaction")
            assert [v[2]["id_tag"] for v in csms.unique.values()] == ["D14B0A54"]
            a = await ask(p, card="0000000011223344")
            assert (a["ok"], a["reason"]) == (0, 1)
            r = await cp.call(call.SendLocalList(list_version=1, update_type="Full",
                                                 local_authorization_list=[
                {"id_tag": "11223344", "id_tag_info": {"status": "Accepted"}}]))
            assert r.status == "Accepted"
            # A differential update older than the list: VersionMismatch.
            r = await cp.call(call.SendLocalList(list_version=1, update_type="Differential",
                                                 local_authorization_list=[{"id_tag": "11223344"}]))
            assert r.status == "VersionMismatch"
            r = await cp.call(call.GetLocalListVersion())
            assert r.list_version == 1
    in_tempdir("ocpp-auth-16", scenario)


def test_B05_B06_get_and_set_variables_change_the_heartbeat_and_unknown_ones_are_named():
    from ocpp.v201 import call

    async def scenario(tmp):
        async with station_up(tmp) as s:
            csms, cp = s.csms, s.cp
            r = await cp.call(call.GetVariables(get_variable_data=[
                {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
                {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "NoSuchVariable"}},
                {"component": {"name": "NoSuchCtrlr"}, "variable": {"name": "Enabled"}},
                {"component": {"name": "LocalAuthListCtrlr"}, "variable": {"name": "Enabled"},
                 "attribute_type": "Target"}]))
            res = r.get_variable_result
            assert (res[0]["attribute_status"], res[0]["attribute_value"]) == ("Accepted", "300")
            assert [x["attribute_status"] for x in res[1:]] == [
                "UnknownVariable", "UnknownComponent", "NotSupportedAttributeType"]
            assert csms.heartbeats[PILE_A] == 0
            r = await cp.call(call.SetVariables(set_variable_data=[
                {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"},
                 "attribute_value": "1"},
                {"component": {"name": "LocalAuthListCtrlr"}, "variable": {"name": "Enabled"},
                 "attribute_value": "false"},
                {"component": {"name": "SampledDataCtrlr"}, "variable": {"name": "TxUpdatedInterval"},
                 "attribute_value": "soon"},
                {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "Nope"},
                 "attribute_value": "1"}]))
            assert [x["attribute_status"] for x in r.set_variable_result] == [
                "Accepted", "Rejected", "Rejected", "UnknownVariable"]
            # The new interval is used at once (the CSMS gave 300 s at boot).
            await csms.wait_for(lambda: csms.heartbeats[PILE_A] >= 2, what="heartbeats")
    in_tempdir("ocpp-vars", scenario)


def test_16_get_and_change_configuration_the_sample_interval_and_unknown_keys():
    from ocpp.v16 import call

    async def scenario(tmp):
        async with station_up(tmp, "1.6") as s:
            csms, p, cp, cfg = s.csms, s.pile, s.cp, s.cfg
            r = await cp.call(call.GetConfiguration(key=["MeterValueSampleInterval", "NoSuchKey"]))
            assert r.configuration_key == [{"key": "MeterValueSampleInterval", "readonly": False,
                                            "value": "0"}]
            assert r.unknown_key == ["NoSuchKey"]
            r = await cp.call(call.GetConfiguration())
            keys = {k["key"] for k in r.configuration_key}
            assert {"HeartbeatInterval", "NumberOfConnectors", "LocalAuthListEnabled"} <= keys
            assert (await cp.call(call.ChangeConfiguration(key="NoSuchKey", value="1"))).status \
                == "NotSupported"
            assert (await cp.call(call.ChangeConfiguration(key="NumberOfConnectors", value="4"))
                    ).status == "Rejected"
            assert (await cp.call(call.ChangeConfiguration(key="MeterValueSampleInterval",
                                                           value="x"))).status == "Rejected"
            # MeterValues every 0 s -> every hour: a charge with three
            # reports sends none (its Stop comes after, in order).
            r = await cp.call(call.ChangeConfiguration(key="MeterValueSampleInterval", value="3600"))
            assert r.status == "Accepted"
            bill = make_bill(PILE_A, 1)
            for e in (100, 200, 300):
                await p.realtime(status=3, serial=bill["serial"], energy=e)
            assert await p.send_bill(bill, make_extra(bill)) == 0
            await p.wait_for(lambda: bill["serial"] in p.settled, timeout=10)
            assert [e[3] for e in csms.events] == ["Started", "Ended"]
        # Kept across a restart.
        async with bridge_running(cfg, mqtt_up=False) as b:
            assert b.ocpp.var(PILE_A, "MeterValueSampleInterval") == 3600
    in_tempdir("ocpp-conf16", scenario)


def test_B02_B03_boot_pending_then_rejected_no_transaction_message_before_accepted():
    from ocpp.v201 import call

    async def scenario(tmp):
        async with Csms() as csms:
            csms.boot_status, csms.boot_interval = "Pending", 1
            cfg = control_config(tmp, csms)
            async with bridge_running(cfg, mqtt_up=False) as b:
                p = await connect_pile(PILE_A, b.tcp_port)
                bill = make_bill(PILE_A, 2)
                # Custody passes (0x40) while the CSMS has not accepted the station.
                assert await p.send_bill(bill, make_extra(bill)) == 0
                await csms.wait_for(lambda: csms.boots[PILE_A] >= 2, what="boot asked again (Pending)")
                # Pending: the CSMS may configure the station before accepting it.
                r = await csms.stations[PILE_A].call(call.GetVariables(get_variable_data=[
                    {"component": {"name": "AuthCtrlr"}, "variable": {"name": "LocalAuthorizeOffline"}}]))
                assert r.get_variable_result[0]["attribute_value"] == "true"
                csms.boot_status = "Rejected"
                await until(lambda: b.ocpp.stations[PILE_A].boot_status == "Rejected",
                            what="boot asked again (Rejected)")
                # Nothing but boots (no status, no transaction) and no 0xE4.
                assert csms.events == [] and csms.statuses == []
                assert bill["serial"] not in p.settled
                csms.boot_status = "Accepted"
                await p.wait_for(lambda: bill["serial"] in p.settled, timeout=15)
                assert [e[3] for e in csms.events] == ["Started", "Ended"]
                await p.close()
    in_tempdir("ocpp-boot", scenario)


@contextlib.asynccontextmanager
async def firmware_station_up(tmp, master, path, version, pile_cls, id_tokens=None):
    """A CSMS of `version` (knowing `id_tokens`), an OCPP-only bridge on the
    serial link `path` and our firmware (`pile_cls`, a FirmwarePile) on
    `master`, its station accepted: yields (the ocpp `call` module of that
    version, the CSMS, its side of the station, the pile)."""
    if version == "1.6":
        from ocpp.v16 import call
    else:
        from ocpp.v201 import call
    async with Csms(version=version) as csms:
        if id_tokens:
            csms.id_tokens = id_tokens
        cfg = control_config(tmp, csms, {"version": version}, tcp={"listen": None},
                             serial=[{"url": path, "baudrate": 115200, "ext": True}],
                             piles={"heartbeat_s": 1.0, "command_timeout_s": 3.0})
        root = os.path.join(tmp, "flash")
        os.mkdir(root)
        async with bridge_running(cfg, mqtt_up=False):
            async with pile_cls(root, master, PILE_A, speed=60) as fw:
                await up(csms)
                yield call, csms, csms.stations[PILE_A], fw


def in_both_versions(tag, scenario, timeout=90):
    """scenario(tmp, master, path, version) for OCPP 2.0.1 then 1.6, each on
    a fresh temp dir and pty."""
    for version in ("2.0.1", "1.6"):
        with tempdir(tag) as tmp, pty_pair() as (master, path):
            run(scenario(tmp, master, path, version), timeout=timeout)


class SharingPile(FirmwarePile):
    """Our firmware with power sharing on (one output, a 60 kW pile)."""

    def _boot(self):
        from sim.hardware import SimOutput
        w = self.world
        if not hasattr(self, "outputs"):
            self.cfg["power_w"] = 60000
            self.outputs = [SimOutput(w.vehicle)]
        self.pile = self._Pile(self.cfg, self.root, w.clock, self.uart, w.meter, w.contactor,
                               w.vehicle, reboot=self._reboot, outputs=self.outputs)


def _profile_201(pid, evse_limit, unit="W", purpose="ChargingStationMaxProfile", stack=0, tx=None):
    p = {"id": pid, "stack_level": stack, "charging_profile_purpose": purpose,
         "charging_profile_kind": "Relative", "charging_schedule": [{
             "id": pid, "charging_rate_unit": unit,
             "charging_schedule_period": [{"start_period": 0, "limit": evse_limit}]}]}
    if tx:
        p["transaction_id"] = tx
    return p


def _profile_16(pid, limit, unit="A", purpose="ChargePointMaxProfile", stack=0):
    return {"charging_profile_id": pid, "stack_level": stack, "charging_profile_purpose": purpose,
            "charging_profile_kind": "Relative", "charging_schedule": {
                "charging_rate_unit": unit,
                "charging_schedule_period": [{"start_period": 0, "limit": limit, "number_phases": 3}]}}


async def _remote_start(cp, call, version, evse):
    # RemoteStartTransaction (1.6) / RequestStartTransaction (2.0.1) on `evse`.
    if version == "1.6":
        return await cp.call(call.RemoteStartTransaction(id_tag="D14B0A54", connector_id=evse))
    return await cp.call(call.RequestStartTransaction(
        id_token={"id_token": "D14B0A54", "type": "ISO14443"}, remote_start_id=evse, evse_id=evse))


async def _tx_default(cp, call, version, evse, pid, watts):
    # A TxDefaultProfile of `watts` on `evse`, in either version.
    if version == "1.6":
        return await cp.call(call.SetChargingProfile(
            connector_id=evse, cs_charging_profiles=_profile_16(pid, watts, "W", "TxDefaultProfile")))
    return await cp.call(call.SetChargingProfile(
        evse_id=evse, charging_profile=_profile_201(pid, watts, purpose="TxDefaultProfile")))


async def _clear(cp, call, version, pid):
    return await cp.call(call.ClearChargingProfile(id=pid) if version == "1.6" else
                         call.ClearChargingProfile(charging_profile_id=pid))


def test_K01_K10_charging_profiles_cap_the_power_the_firmware_commands_201_and_16():
    # The real firmware with power sharing behind the bridge: a profile on
    # EVSE 0 becomes the pile's cap (0xDE) and the power its output is
    # commanded; clearing it lifts the cap. 2.0.1 in W, 1.6 in A (x 230 V x 3).
    async def scenario(tmp, master, path, version):
        async with firmware_station_up(tmp, master, path, version,
                                       SharingPile) as (call, _, cp, fw):
            if version == "1.6":
                cap = 32 * 230 * 3          # 22080 W
                r = await cp.call(call.SetChargingProfile(
                    connector_id=0, cs_charging_profiles=_profile_16(5, 32)))
            else:
                cap = 22000
                r = await cp.call(call.SetChargingProfile(
                    evse_id=0, charging_profile=_profile_201(5, cap)))
            assert r.status == "Accepted"
            await fw.wait_for(lambda: fw.pile.sharing.site_cap == cap, 15)
            # A start from the CSMS (0x34 with no balance limit): the gun
            # draws the capped power, no more.
            r = await _remote_start(cp, call, version, 1)
            assert r.status == "Accepted"
            await fw.wait_for(lambda: fw.world.vehicle.power == cap, 15)
            assert fw.outputs[0].limit == cap
            # A lower TxDefault profile on EVSE 1 (a one-gun pile: the pile).
            r = await _tx_default(cp, call, version, 1, 6, 10000)
            assert r.status == "Accepted"
            await fw.wait_for(lambda: fw.world.vehicle.power == 10000, 15)
            # Cleared: back to the station maximum, then no cap at all.
            r = await _clear(cp, call, version, 6)
            assert r.status == "Accepted"
            await fw.wait_for(lambda: fw.world.vehicle.power == cap, 15)
            if version == "1.6":
                r = await cp.call(call.ClearChargingProfile())
            else:
                r = await cp.call(call.ClearChargingProfile(
                    charging_profile_criteria={"charging_profile_purpose":
                                               "ChargingStationMaxProfile"}))
            assert r.status == "Accepted"
            await fw.wait_for(lambda: fw.pile.sharing.site_cap == 0, 15)
            await fw.wait_for(lambda: fw.world.vehicle.power > cap, 15)
            r = await _clear(cp, call, version, 99)
            assert r.status == "Unknown"
    in_both_versions("ocpp-cap", scenario)


def test_K01_a_profile_on_one_evse_of_a_two_gun_pile_caps_that_gun_only_201_and_16():
    # decisions.md: "SetChargingProfile on an EVSE caps that gun; on EVSE 0
    # the pile." Our two-gun firmware with power sharing: a TxDefault profile
    # on EVSE 2 reaches the pile as 0xDC; gun 2 draws its cap, gun 1 the rest
    # of the pile's 60 kW; cleared, the guns share equally again.
    from tests.test_guns_bridge import SharingTwoGunPile

    async def scenario(tmp, master, path, version):
        async with firmware_station_up(tmp, master, path, version,
                                       SharingTwoGunPile) as (call, _, cp, fw):
            for evse in (1, 2):
                r = await _remote_start(cp, call, version, evse)
                assert r.status == "Accepted"
            powers = lambda: [w.vehicle.power for w in fw.worlds]   # noqa: E731
            await fw.wait_for(lambda: powers() == [30000, 30000], 15)
            r = await _tx_default(cp, call, version, 2, 7, 7000)
            assert r.status == "Accepted", r
            await fw.wait_for(lambda: powers() == [53000, 7000], 15)
            assert fw.pile.sharing.gun_cap == [0, 7000] and fw.pile.sharing.site_cap == 0
            r = await _clear(cp, call, version, 7)
            assert r.status == "Accepted"
            await fw.wait_for(lambda: powers() == [30000, 30000], 15)
            assert fw.pile.sharing.gun_cap == [0, 0]
            # The pile keeps a gun's cap in RAM: after a restart the
            # bridge sends it again at login.
            r = await _tx_default(cp, call, version, 2, 8, 9000)
            assert r.status == "Accepted", r
            await fw.wait_for(lambda: fw.pile.sharing.gun_cap == [0, 9000], 15)
            first = fw.pile
            fw._reboot()
            assert fw.pile is not first and fw.pile.sharing.gun_cap == [0, 0]
            await fw.wait_for(lambda: fw.pile.sharing.gun_cap == [0, 9000], 15)
    in_both_versions("ocpp-guncap", scenario)


_CAP_HANDLERS = {}      # protocol/router.py: the frames CapPile adds to ScriptedPile's


class CapPile(ScriptedPile):
    """A scripted pile that holds the site cap it is sent (0xDE -> 0xDF) and
    the 0x52 max_power % (30..100) of a third-party pile."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.caps = []
        self.percents = []

    async def _on_frame(self, f):
        h = _CAP_HANDLERS.get(f.code)
        if h is not None:
            await self.send(*reply(f, await h(self, f)))
        await super()._on_frame(f)

    @on(_CAP_HANDLERS, 0xDE)
    async def _site_cap(self, f):
        self.caps.append(f.fields["cap"])
        return {"pile": self.code, "cap": f.fields["cap"], "result": 1}

    @on(_CAP_HANDLERS, 0x52)
    async def _work_params(self, f):
        ok = 30 <= f.fields["max_power"] <= 100
        if ok:
            self.percents.append(f.fields["max_power"])
        return {"pile": self.code, "result": int(ok)}


def test_K01_16_a_third_party_pile_is_capped_by_0x52_as_a_percentage_of_its_rating():
    from ocpp.v16 import call

    async def scenario(tmp):
        async with Csms(version="1.6") as csms:
            cfg = control_config(tmp, csms, {"version": "1.6", "rated_kw": 60},
                                 pile={PILE_A: {"ext": False}})
            async with bridge_running(cfg, mqtt_up=False) as b:
                p = CapPile(PILE_A, await TcpTransport.connect("127.0.0.1", b.tcp_port), ext=False)
                assert await p.login() == 0
                await up(csms)
                cp = csms.stations[PILE_A]
                r = await cp.call(call.SetChargingProfile(connector_id=0, cs_charging_profiles=
                                                          _profile_16(1, 45000, "W")))
                assert r.status == "Accepted" and p.percents == [75]
                # Below the 30 % 0x52 allows: refused, the cap before kept.
                r = await cp.call(call.SetChargingProfile(connector_id=0, cs_charging_profiles=
                                                          _profile_16(2, 10000, "W", stack=1)))
                assert r.status == "Rejected" and p.percents == [75]
                assert b.ocpp.cap_w(PILE_A) == 45000
                await p.close()
            async with bridge_running(cfg, mqtt_up=False) as b:
                # Sent again at the next login (kept in the store).
                p = CapPile(PILE_A, await TcpTransport.connect("127.0.0.1", b.tcp_port), ext=False)
                assert await p.login() == 0
                await p.wait_for(lambda: p.percents == [75])
                await up(csms)
                cp = csms.stations[PILE_A]
                assert (await cp.call(call.ClearChargingProfile())).status == "Accepted"
                assert p.percents == [75, 100] and p.caps == []
                await p.close()
    in_tempdir("ocpp-cap-52", scenario)


def test_K01_profiles_are_kept_across_a_restart_and_sent_at_login_and_bad_ones_refused():
    from ocpp.v201 import call

    async def scenario(tmp):
        async with Csms() as csms:
            cfg = control_config(tmp, csms, pile={PILE_A: {"power_cap_kw": 50}})
            async with bridge_running(cfg, mqtt_up=False) as b:
                p = CapPile(PILE_A, await TcpTransport.connect("127.0.0.1", b.tcp_port))
                assert await p.login() == 0
                await p.wait_for(lambda: p.caps == [50000])        # the config's cap at login
                await up(csms)
                cp = csms.stations[PILE_A]
                r = await cp.call(call.SetChargingProfile(evse_id=0, charging_profile=_profile_201(
                    1, 16, unit="A")))              # 16 A x 230 V x 3 phases
                assert r.status == "Accepted" and p.caps[-1] == 11040
                # Refused, with the reason: a station maximum on an EVSE, a
                # TxProfile with no such transaction, EVSE 2 of a one-gun pile.
                for evse, prof, code in (
                        (1, _profile_201(2, 5000), "InvalidProfile"),
                        (1, _profile_201(3, 5000, purpose="TxProfile", tx="1" * 32), "TxNotFound"),
                        (2, _profile_201(4, 5000, purpose="TxDefaultProfile"), "InvalidProfile")):
                    r = await cp.call(call.SetChargingProfile(evse_id=evse, charging_profile=prof))
                    assert r.status == "Rejected" and r.status_info["reason_code"] == code, r
                    assert r.status_info["additional_info"]
                assert p.caps[-1] == 11040
                await p.close()
            async with bridge_running(cfg, mqtt_up=False) as b:
                p = CapPile(PILE_A, await TcpTransport.connect("127.0.0.1", b.tcp_port))
                assert await p.login() == 0
                # The profile came back from the store: the lower of the two at login.
                await p.wait_for(lambda: p.caps == [11040])
                await p.close()
    in_tempdir("ocpp-cap-keep", scenario)


def test_L01_update_firmware_runs_the_signed_push_and_reports_each_stage_201_and_16():
    # UpdateFirmware names an image the operator put in upgrade.image_dir (by
    # the location's file name); the bridge pushes it signed (host/push.py)
    # to our firmware, which installs it and comes back with the new version;
    # the CSMS hears Downloading .. Installed. An image that is not there:
    # DownloadFailed, nothing sent to the pile.
    from tests.test_bridge_remote import CMD_KEY, NEW, UP_KEY, KeyedPile, image, key_file

    async def scenario(tmp, master, path, version):
        if version == "1.6":
            from ocpp.v16 import call
        else:
            from ocpp.v201 import call
        images = os.path.join(tmp, "images")
        os.mkdir(images)
        with open(os.path.join(images, "fw-%s.img" % NEW), "wb") as f:
            f.write(image())
        async with Csms(version=version) as csms:
            cfg = control_config(tmp, csms, {"version": version}, tcp={"listen": None},
                                 serial=[{"url": path, "baudrate": 115200, "ext": True}],
                                 piles={"heartbeat_s": 1.0, "command_timeout_s": 3.0},
                                 pile={PILE_A: {"cmd_key_file": key_file(tmp, "pile-a.key", CMD_KEY)}},
                                 keys={"upgrade_key_file": key_file(tmp, "upgrade.key", UP_KEY)},
                                 upgrade={"image_dir": images})
            root = os.path.join(tmp, "flash")
            os.mkdir(root)
            async with bridge_running(cfg, mqtt_up=False):
                fw = KeyedPile(root, master, PILE_A, {"cmd_key": CMD_KEY, "upgrade_key": UP_KEY,
                                                      "sw_version": "209.03.00"}).start()
                try:
                    await up(csms)
                    cp = csms.stations[PILE_A]

                    def update(name, rid):
                        loc = "https://fw.example/images/" + name
                        if version == "1.6":
                            return call.UpdateFirmware(location=loc, retrieve_date="2020-01-01T00:00:00Z")
                        return call.UpdateFirmware(request_id=rid, firmware={
                            "location": loc, "retrieve_date_time": "2020-01-01T00:00:00Z"})
                    r = await cp.call(update("fw-%s.img" % NEW, 4))
                    assert version == "1.6" or r.status == "Accepted"
                    await csms.wait_for(lambda: csms.firmware and csms.firmware[-1][1] in (
                        "Installed", "InstallationFailed", "DownloadFailed"), timeout=60, what="done")
                    rid = None if version == "1.6" else 4
                    assert csms.firmware == [(PILE_A, s, rid) for s in (
                        "Downloading", "Downloaded", "Installing", "Installed")]
                    assert fw.reboots == 1 and fw.pile.remote.board_version() == NEW
                    del csms.firmware[:]
                    r = await cp.call(update("fw-209.6.0.img", 5))
                    await csms.wait_for(lambda: csms.firmware and csms.firmware[-1][1] in (
                        "Installed", "InstallationFailed", "DownloadFailed"), what="done")
                    assert [x[1] for x in csms.firmware] == ["Downloading", "DownloadFailed"]
                    assert fw.pile.remote.board_version() == NEW
                finally:
                    await fw.close()
    in_both_versions("ocpp-fw", scenario, timeout=120)


def test_never_drop_a_full_queue_refuses_new_starts_until_the_csms_takes_it():
    # Issue 15 item 4: never-drop retries for ever and refuses new starts
    # while the pile's queue for the CSMS is full (ocpp.max_queued).
    from ocpp.v201 import call

    async def scenario(tmp):
        async with station_up(tmp, max_queued=2) as s:
            csms, p, cp = s.csms, s.pile, s.cp
            csms.id_tokens = {UID: "Accepted"}
            csms.refuse = True
            bill = make_bill(PILE_A, 7)
            assert await p.send_bill(bill, make_extra(bill)) == 0   # Started + Ended queued
            await csms.wait_for(lambda: csms.refused >= 1, what="a refused try")
            r = await cp.call(call.RequestStartTransaction(
                id_token={"id_token": UID, "type": "ISO14443"}, remote_start_id=1, evse_id=1))
            assert r.status == "Rejected" and "max_queued" in r.status_info["additional_info"]
            assert p.received("remote_start") == []
            a = await ask(p)
            assert (a["ok"], a["reason"]) == (0, 0x0A)
            assert csms.authorized == []
            # The CSMS takes the queue: starts go again, nothing was dropped.
            csms.refuse = False
            await p.wait_for(lambda: bill["serial"] in p.settled, timeout=15)
            assert [e[3] for e in csms.events] == ["Started", "Ended"]
            r = await cp.call(call.RequestStartTransaction(
                id_token={"id_token": UID, "type": "ISO14443"}, remote_start_id=2, evse_id=1))
            assert r.status == "Accepted"
            a = await ask(p)
            assert a["ok"] == 1
    in_tempdir("ocpp-full", scenario)


def test_the_ocpp_control_settings_are_checked_with_a_clear_error():
    import pytest
    from host import config as configmod
    base = {"site": "t1", "mqtt": {"enabled": False}}
    ok = configmod.load(None, dict(base, ocpp={"csms_url": "ws://127.0.0.1:1/ocpp"}))
    o = ok["ocpp"]
    assert (o["local_authorize_offline"], o["offline_unknown_ids"], o["volts"], o["rated_kw"],
            o["max_queued"]) == (True, False, 230, None, 10000)
    for bad, what in (({"offline_unknown_ids": "yes"}, "offline_unknown_ids"),
                      ({"volts": 0}, "ocpp.volts"), ({"volts": True}, "ocpp.volts"),
                      ({"rated_kw": -5}, "ocpp.rated_kw"), ({"max_queued": -1}, "ocpp.max_queued"),
                      ({"max_queued": 1.5}, "ocpp.max_queued")):
        with pytest.raises(configmod.ConfigError, match=what):
            configmod.load(None, dict(base, ocpp=dict({"csms_url": "ws://127.0.0.1:1/ocpp"}, **bad)))


def test_the_limit_in_force_now_of_a_charging_schedule():
    import pytest
    from host.ocpp_control import next_period_in, profile_limit_w
    sched = {"charging_rate_unit": "W", "start_schedule": "2026-01-01T00:00:00Z",
             "charging_schedule_period": [{"start_period": 3600, "limit": 7000},
                                          {"start_period": 0, "limit": 11000}]}
    t0 = 1767225600     # 2026-01-01T00:00:00Z
    assert profile_limit_w(sched, "Absolute", 230, now=t0 + 10) == 11000
    assert profile_limit_w(sched, "Absolute", 230, now=t0 + 3600) == 7000
    # Recurring daily: a day later, the same hour -> the same period.
    assert profile_limit_w(sched, "Recurring", 230, now=t0 + 86400 + 30) == 11000
    # Relative: from the start, whatever start_schedule says.
    assert profile_limit_w(sched, "Relative", 230, now=t0 + 7200) == 11000
    # When the next period starts (the bridge sends the cap again then).
    assert next_period_in(sched, "Absolute", now=t0 + 10) == 3590
    assert next_period_in(sched, "Absolute", now=t0 + 3600) is None
    assert next_period_in(sched, "Recurring", now=t0 + 3600) == 86400 - 3600
    weekly = dict(sched, recurrency_kind="Weekly")      # copied from the profile by set_profile
    assert next_period_in(weekly, "Recurring", now=t0 + 3600) == 7 * 86400 - 3600
    assert profile_limit_w(weekly, "Recurring", 230, now=t0 + 86400 + 3600) == 7000
    assert next_period_in(sched, "Relative", now=t0 + 10) is None
    amps = {"charging_rate_unit": "A", "charging_schedule_period": [
        {"start_period": 0, "limit": 16.5, "number_phases": 1}]}
    assert profile_limit_w(amps, "Relative", 230) == 3795
    zero = {"charging_rate_unit": "W", "charging_schedule_period": [{"start_period": 0, "limit": 0}]}
    assert profile_limit_w(zero, "Relative", 230) == 1      # 0 W on the wire lifts the cap
    for bad in ({"charging_rate_unit": "kW", "charging_schedule_period": [{"start_period": 0,
                                                                          "limit": 1}]},
                {"charging_rate_unit": "W", "charging_schedule_period": []},
                {"charging_rate_unit": "W", "charging_schedule_period": [{"start_period": 0,
                                                                         "limit": -1}]}):
        with pytest.raises(ValueError):
            profile_limit_w(bad, "Relative", 230)


def test_K01_a_schedule_with_a_later_period_changes_the_cap_when_that_period_starts():
    import time
    from ocpp.v201 import call

    async def scenario(tmp):
        async with station_up(tmp, pile_cls=CapPile) as s:
            p = s.pile
            prof = _profile_201(1, 5000)
            prof["charging_profile_kind"] = "Absolute"
            prof["charging_schedule"][0].update(
                start_schedule=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                charging_schedule_period=[{"start_period": 0, "limit": 5000},
                                          {"start_period": 2, "limit": 8000}])
            r = await s.cp.call(call.SetChargingProfile(evse_id=0, charging_profile=prof))
            assert r.status == "Accepted"
            await p.wait_for(lambda: p.caps and p.caps[-1] == 8000, timeout=10)
            assert p.caps == [5000, 8000]
    in_tempdir("ocpp-cap-sched", scenario)


def test_C01_a_card_swiped_at_our_firmware_charges_once_the_csms_authorised_it():
    # End to end on the real firmware: the swipe's 0x31 -> Authorize ->
    # 0x32 (no balance limit) -> the gun charges; its Started carries the
    # card's UID. An unknown card first: refused, nothing charges.
    from firmware import session as S

    async def scenario(tmp, master, path):
        async with firmware_station_up(tmp, master, path, "2.0.1", FirmwarePile,
                                       id_tokens={UID: "Accepted"}) as (_, csms, _, fw):
            gun = fw.pile.gun
            await fw.wait_for(lambda: fw.pile.link.online and gun.state == S.PLUGGED, 15)
            assert fw.pile.card_swiped("0000000011223344") == "asked"
            await fw.wait_for(lambda: gun.state == S.PLUGGED and gun.refusal == 1, 15)
            assert csms.authorized[-1][1:] == ("11223344", "ISO14443", "Invalid")
            assert fw.pile.card_swiped(CARD) == "asked"
            started = await csms.wait_for(lambda: [v for v in csms.unique.values()
                                                   if v[1] == "Started"], what="Started")
            assert started[0][2]["id_token"] == {"id_token": UID, "type": "ISO14443"}
            await fw.wait_for(lambda: fw.world.meter.read_energy() > 1000, 15)
            assert gun.state == S.CHARGING
    in_tempdir("ocpp-swipe", scenario, timeout=90, pty=True)


def test_K01_a_tx_profile_caps_its_transaction_and_goes_with_its_bill():
    from ocpp.v201 import call

    async def scenario(tmp):
        async with station_up(tmp, pile_cls=CapPile) as s:
            p = s.pile
            bill = make_bill(PILE_A, 3)
            await p.realtime(status=3, serial=bill["serial"], energy=100)
            await s.csms.wait_for(lambda: (bill["serial"], 0) in s.csms.unique, what="Started")
            r = await s.cp.call(call.SetChargingProfile(evse_id=1, charging_profile=_profile_201(
                9, 6000, purpose="TxProfile", tx=bill["serial"])))
            assert r.status == "Accepted" and p.caps == [6000]
            assert await p.send_bill(bill, make_extra(bill)) == 0
            await p.wait_for(lambda: p.caps == [6000, 0])      # the transaction ended: lifted
            assert s.bridge.ocpp.cap_w(PILE_A) is None
    in_tempdir("ocpp-cap-tx", scenario)


def test_F06_trigger_message_heartbeat_status_and_firmware_status_201_and_16():
    async def scenario(tmp, version):
        if version == "1.6":
            from ocpp.v16 import call
        else:
            from ocpp.v201 import call
        async with station_up(tmp, version) as s:
            csms = s.csms
            n = len(csms.statuses)
            assert csms.heartbeats[PILE_A] == 0
            for what in ("Heartbeat", "StatusNotification", "FirmwareStatusNotification"):
                r = await s.cp.call(call.TriggerMessage(requested_message=what))
                assert r.status == "Accepted", what
            await csms.wait_for(lambda: csms.heartbeats[PILE_A] == 1 and len(csms.statuses) == n + 1
                                and csms.firmware, what="the three triggered messages")
            assert csms.statuses[-1] == (PILE_A, 1, "Available")
            assert csms.firmware == [(PILE_A, "Idle", None)]
            r = await s.cp.call(call.TriggerMessage(requested_message="MeterValues"))
            assert r.status == "NotImplemented"
    for version in ("2.0.1", "1.6"):
        with tempdir("ocpp-trigger") as tmp:
            run(scenario(tmp, version))
