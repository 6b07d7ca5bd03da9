# The CSMS's calls on a station (the `ocpp` library's ChargePoint, station
# side), mapped onto the bridge and host/ocpp_control.py; docs/ocpp.md has
# the table. One class per OCPP version, the logic shared in the uplink.
import logging

from host.ocpp_control import _COMPONENTS, _VAR_OF_201, _VARS

log = logging.getLogger("host.ocpp")



def make_charge_point(station, ws):
    """The station side's ChargePoint, with the CSMS's calls mapped onto the
    bridge (docs/ocpp.md has the table)."""
    from ocpp.routing import after, on
    up = station.up
    b = up.b
    code = station.code

    if up.v16:
        from ocpp.v16 import ChargePoint, call_result

        class CP(ChargePoint):
            @on("RemoteStartTransaction")
            async def remote_start(self, id_tag, connector_id=None, **kw):
                if await up.custody_full(code):
                    return call_result.RemoteStartTransaction(status="Rejected")
                ok, _ = await b.ocpp_start(code, connector_id or 1, id_tag)
                return call_result.RemoteStartTransaction(status="Accepted" if ok else "Rejected")

            @on("RemoteStopTransaction")
            async def remote_stop(self, transaction_id, **kw):
                tx = await b.store.ocpp_tx(tx_id=str(transaction_id))
                ok = tx is not None and await b.ocpp_stop(code, tx[0])
                return call_result.RemoteStopTransaction(status="Accepted" if ok else "Rejected")

            @on("Reset")
            async def reset(self, type, **kw):
                ok = await b.ocpp_reset(code, type == "Hard")
                return call_result.Reset(status="Accepted" if ok else "Rejected")

            @on("SetChargingProfile")
            async def set_profile(self, connector_id, cs_charging_profiles, **kw):
                st, why = await up.set_profile(code, connector_id, cs_charging_profiles)
                if why:
                    log.info("pile %s: SetChargingProfile %s: %s", code, st, why)
                return call_result.SetChargingProfile(status=st)

            @on("ClearChargingProfile")
            async def clear_profile(self, id=None, connector_id=None, charging_profile_purpose=None,
                                    stack_level=None, **kw):
                return call_result.ClearChargingProfile(status=await up.clear_profiles(
                    code, id, connector_id, charging_profile_purpose, stack_level))

            @on("GetConfiguration")
            async def get_configuration(self, key=None, **kw):
                keys = list(_VARS) if not key else key
                known = [k for k in keys if k in _VARS]
                return call_result.GetConfiguration(
                    configuration_key=[{"key": k, "readonly": not _VARS[k][4],
                                        "value": up.var_text(up.var(code, k))} for k in known],
                    unknown_key=[k for k in keys if k not in _VARS] or None)

            @on("ChangeConfiguration")
            async def change_configuration(self, key, value, **kw):
                st = await up.set_var(code, key, value)
                return call_result.ChangeConfiguration(status=st or "NotSupported")

            @on("SendLocalList")
            async def send_local_list(self, list_version, update_type, local_authorization_list=None,
                                      **kw):
                entries = [(e["id_tag"], (e.get("id_tag_info") or {}).get("status"))
                           for e in local_authorization_list or []]
                return call_result.SendLocalList(status=await up.send_local_list(
                    code, list_version, update_type == "Full", entries))

            @on("GetLocalListVersion")
            async def get_local_list_version(self, **kw):
                return call_result.GetLocalListVersion(list_version=up.local_list(code)["version"])

            @on("TriggerMessage")
            async def trigger_message(self, requested_message, connector_id=None, **kw):
                return call_result.TriggerMessage(
                    status="Accepted" if requested_message in up.TRIGGERS else "NotImplemented")

            @after("TriggerMessage")
            async def triggered(self, requested_message, connector_id=None, **kw):
                if requested_message in up.TRIGGERS:
                    up.trigger(code, requested_message, connector_id)

            @on("UpdateFirmware")
            async def update_firmware(self, location, retrieve_date, **kw):
                why = up.update_firmware(code, location, when=retrieve_date)
                if why:     # 1.6 has no refusal: the CSMS hears DownloadFailed
                    log.warning("pile %s: UpdateFirmware refused: %s", code, why)
                    b._spawn(up.firmware_status(code, "DownloadFailed"))
                return call_result.UpdateFirmware()

        return CP(code, ws, response_timeout=up.cfg["response_timeout_s"])

    from ocpp.v201 import ChargePoint, call_result

    class CP(ChargePoint):
        @on("RequestStartTransaction")
        async def request_start(self, id_token, remote_start_id, evse_id=None, **kw):
            if await up.custody_full(code):
                return call_result.RequestStartTransaction(status="Rejected", status_info={
                    "reason_code": "Busy",
                    "additional_info": "%d messages for the CSMS not answered yet (ocpp.max_queued)"
                                       % up.cfg["max_queued"]})
            ok, serial = await b.ocpp_start(code, evse_id or 1, (id_token or {}).get("id_token"))
            if ok:
                return call_result.RequestStartTransaction(status="Accepted", transaction_id=serial)
            return call_result.RequestStartTransaction(status="Rejected")

        @on("RequestStopTransaction")
        async def request_stop(self, transaction_id, **kw):
            ok = await b.ocpp_stop(code, transaction_id)
            return call_result.RequestStopTransaction(status="Accepted" if ok else "Rejected")

        @on("GetTransactionStatus")
        async def get_status(self, transaction_id=None, **kw):
            # Answered from the SQLite custody, not from memory.
            if transaction_id is None:
                n = await b.store.ocpp_open_count(code)
                return call_result.GetTransactionStatus(messages_in_queue=n > 0)
            tx = await b.store.ocpp_tx(transaction_id)
            if tx is None:
                return call_result.GetTransactionStatus(messages_in_queue=False)
            ongoing = not tx[7]
            return call_result.GetTransactionStatus(messages_in_queue=tx[5] > 0,
                                                    ongoing_indicator=ongoing)

        @on("Reset")
        async def reset(self, type, evse_id=None, **kw):
            ok = await b.ocpp_reset(code, type == "Immediate")
            return call_result.Reset(status="Accepted" if ok else "Rejected")

        @on("SetChargingProfile")
        async def set_profile(self, evse_id, charging_profile, **kw):
            st, why = await up.set_profile(code, evse_id, charging_profile)
            info = None
            if why:
                code_, _, text = why.partition(": ")
                info = {"reason_code": code_, "additional_info": text[:512]}
            return call_result.SetChargingProfile(status=st, status_info=info)

        @on("ClearChargingProfile")
        async def clear_profile(self, charging_profile_id=None, charging_profile_criteria=None, **kw):
            c = charging_profile_criteria or {}
            return call_result.ClearChargingProfile(status=await up.clear_profiles(
                code, charging_profile_id, c.get("evse_id"), c.get("charging_profile_purpose"),
                c.get("stack_level")))

        @on("GetVariables")
        async def get_variables(self, get_variable_data, **kw):
            out = []
            for d in get_variable_data:
                comp, var = d["component"], d["variable"]
                r = {"component": comp, "variable": var}
                key = _VAR_OF_201.get((comp["name"], var["name"], var.get("instance")))
                if d.get("attribute_type", "Actual") != "Actual":
                    r["attribute_status"] = "NotSupportedAttributeType"
                elif key is None:
                    r["attribute_status"] = ("UnknownVariable" if comp["name"] in _COMPONENTS
                                             else "UnknownComponent")
                else:
                    r.update(attribute_status="Accepted", attribute_type="Actual",
                             attribute_value=up.var_text(up.var(code, key)))
                out.append(r)
            return call_result.GetVariables(get_variable_result=out)

        @on("SetVariables")
        async def set_variables(self, set_variable_data, **kw):
            out = []
            for d in set_variable_data:
                comp, var = d["component"], d["variable"]
                key = _VAR_OF_201.get((comp["name"], var["name"], var.get("instance")))
                if d.get("attribute_type", "Actual") != "Actual":
                    st = "NotSupportedAttributeType"
                elif key is None:
                    st = "UnknownVariable" if comp["name"] in _COMPONENTS else "UnknownComponent"
                else:
                    st = await up.set_var(code, key, d["attribute_value"])
                out.append({"attribute_status": st, "component": comp, "variable": var,
                            "attribute_type": d.get("attribute_type", "Actual")})
            return call_result.SetVariables(set_variable_result=out)

        @on("SendLocalList")
        async def send_local_list(self, version_number, update_type, local_authorization_list=None,
                                  **kw):
            entries = [(e["id_token"]["id_token"], (e.get("id_token_info") or {}).get("status"))
                       for e in local_authorization_list or []]
            return call_result.SendLocalList(status=await up.send_local_list(
                code, version_number, update_type == "Full", entries))

        @on("GetLocalListVersion")
        async def get_local_list_version(self, **kw):
            return call_result.GetLocalListVersion(version_number=up.local_list(code)["version"])

        @on("TriggerMessage")
        async def trigger_message(self, requested_message, evse=None, **kw):
            return call_result.TriggerMessage(
                status="Accepted" if requested_message in up.TRIGGERS else "NotImplemented")

        @after("TriggerMessage")
        async def triggered(self, requested_message, evse=None, **kw):
            if requested_message in up.TRIGGERS:
                up.trigger(code, requested_message, (evse or {}).get("id"))

        @on("UpdateFirmware")
        async def update_firmware(self, request_id, firmware, custom_data=None, **kw):
            why = up.update_firmware(code, firmware["location"], request_id,
                                     (custom_data or {}).get("version"),
                                     firmware.get("retrieve_date_time"))
            if why:
                return call_result.UpdateFirmware(status="Rejected", status_info={
                    "reason_code": "UnsupportedRequest", "additional_info": why[:512]})
            return call_result.UpdateFirmware(status="Accepted")

    return CP(code, ws, response_timeout=up.cfg["response_timeout_s"])
