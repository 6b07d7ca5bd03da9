"""The fixed mutant set (issue 23 item 2): one small bug per promise the docs
make, each with the tests that must catch it. `python -m tools.mutants` applies
each one to a temporary copy of the tree and runs only its tests; a mutant
that survives, or whose old text is no longer in the file (the code moved:
update the mutant), fails the run.

Each entry: id, the rule it breaks, edits [(file, old text, new text)] (the
old text must occur exactly once in the file) and the pytest node ids that
must fail on it. Keep the tests few and fast: the whole set runs inside
tools/test.sh.
"""

MUTANTS = [
    # --- never evict a pending bill ---------------------------------------------------
    dict(id="journal-compaction-drops-pending",
         rule="compaction never drops a pending (unconfirmed) bill, only host-confirmed ones",
         edits=[("firmware/journal.py",
                 "if v & 7 == _CONFIRMED and k != protect:",
                 "if v & 7 in (_CONFIRMED, _PENDING) and k != protect:")],
         tests=["tests/test_custody_rules.py::test_compaction_under_pressure_drops_confirmed_bills_never_pending_ones",
                "tests/mp/test_journal.py::test_journal_full_of_unconfirmed_bills_refuses_starts_and_keeps_every_bill"]),
    dict(id="outbox-unknown-0x40-result-makes-bill-illegal",
         rule="a 0x40 with a result other than 0 or 1 leaves the bill pending (resent)",
         edits=[("firmware/outbox.py",
                 "        if result == 1:\n            r = self.j.illegal(serial)",
                 "        if result != 0:\n            r = self.j.illegal(serial)")],
         tests=["tests/test_custody_rules.py::test_a_0x40_with_an_unknown_result_leaves_the_bill_pending_and_resent"]),
    # --- store before the 0x40 ----------------------------------------------------------
    dict(id="bridge-0x40-before-commit",
         rule="the bridge sends the 0x40 only after the bill is committed to SQLite",
         edits=[("host/bridge.py",
                 "        try:\n            kind, bill = await fut\n        except Exception as e:\n"
                 "            # Not committed: no 0x40",
                 "        await conn.send(\"bill_confirm\", {\"serial\": serial, \"result\": 0},"
                 " codec.reply_seq(f))\n"
                 "        try:\n            kind, bill = await fut\n        except Exception as e:\n"
                 "            # Not committed: no 0x40")],
         tests=["tests/test_bridge_durability.py::test_a_bill_whose_commit_fails_gets_no_0x40_and_its_resend_is_taken_once"]),
    # --- settle only after the platform confirmed ----------------------------------------
    dict(id="store-settles-an-unconfirmed-bill",
         rule="a bill is marked settled (and so may be pruned) only once the platform confirmed it",
         edits=[("host/store.py",
                 "        conds.append(\"b.confirmed_at IS NOT NULL\")",
                 "        pass")],
         tests=["tests/test_custody_rules.py::test_a_bill_the_platform_never_confirmed_is_never_marked_settled_nor_pruned"]),
    dict(id="bridge-resend-settles-an-unconfirmed-bill",
         rule="a resent bill gets 0xE4 settled only if the platform already confirmed it",
         edits=[("host/bridge.py",
                 "if self.store.acked_all(bill) and pile.ext and pile.conn is conn:",
                 "if pile.ext and pile.conn is conn:")],
         tests=["tests/test_custody_rules.py::test_a_resent_bill_the_platform_has_not_confirmed_gets_no_settled"]),
    # --- settle only after every uplink acknowledged (issue 15) ---------------------------
    dict(id="store-settles-before-the-csms-answered",
         rule="with OCPP configured, a bill is marked settled only once the CSMS answered its Ended",
         edits=[("host/store.py",
                 "        conds.append(\"b.ocpp_acked_at IS NOT NULL\")",
                 "        pass")],
         tests=["tests/test_store_migration.py::test_a_version_5_store_holding_unconfirmed_bills_is_upgraded_for_the_ocpp_uplink"]),
    dict(id="bridge-settles-on-the-mqtt-confirmation-alone",
         rule="0xE4 goes to the pile only when every configured uplink acknowledged the bill",
         edits=[("host/store.py",
                 "(\"ocpp\" not in self.need) or bill.ocpp_acked_at is not None",
                 "True")],
         tests=["tests/test_ocpp_uplink.py::test_settlement_waits_for_both_the_mqtt_platform_and_the_csms"]),
    # --- every period, the fifth included, adds up to the totals -----------------------------
    dict(id="bill-check-ignores-the-fifth-period",
         rule="the bridge's bill check sums all five periods of a 5-period bill",
         edits=[("protocol/reconcile.py",
                 "    out = []\n    periods = periods_of(bill)\n",
                 "    out = []\n    periods = PERIODS\n")],
         tests=["tests/test_custody_rules.py::test_a_five_period_bill_adds_up_and_a_wrong_deep_period_is_named"]),
    dict(id="platform-reconcile-ignores-the-fifth-period",
         rule="the platform's reconciliation checks the fifth period's fee split too",
         edits=[("protocol/reconcile.py",
                 "    for p in PERIODS5:\n        ef = extra.get(p + \"_energy_fee\", 0)",
                 "    for p in PERIODS:\n        ef = extra.get(p + \"_energy_fee\", 0)")],
         tests=["tests/test_custody_rules.py::test_the_platform_reconciles_a_five_period_bill_on_all_five_periods"]),
    # --- price, energy and amount scales -------------------------------------------------
    dict(id="bill-document-price-scale",
         rule="a period's price is published in yuan/kWh from x10^5 integers",
         edits=[("host/schema.py",
                 "\"price\": dec(f[p + \"_price\"], 5),",
                 "\"price\": dec(f[p + \"_price\"], 4),")],
         tests=["tests/test_custody_rules.py::test_the_bill_document_publishes_prices_energy_and_amounts_at_their_scales"]),
    dict(id="bill-document-energy-scale",
         rule="energy is published in kWh from x10^4 integers",
         edits=[("host/schema.py",
                 "\"total_energy\": dec(f[\"total_energy\"], 4),",
                 "\"total_energy\": dec(f[\"total_energy\"], 3),")],
         tests=["tests/test_custody_rules.py::test_the_bill_document_publishes_prices_energy_and_amounts_at_their_scales"]),
    dict(id="bill-document-amount-scale",
         rule="amounts are published in yuan from x10^4 integers",
         edits=[("host/schema.py",
                 "\"amount\": dec(f[p + \"_amount\"], 4),",
                 "\"amount\": dec(f[p + \"_amount\"], 2),")],
         tests=["tests/test_custody_rules.py::test_the_bill_document_publishes_prices_energy_and_amounts_at_their_scales"]),
    dict(id="tariff-rounding-floors",
         rule="one rounding rule: a fee is rounded half up to 10^-4 yuan",
         edits=[("firmware/tariff.py",
                 "return (e4kwh * price_e5 + 50000) // 100000",
                 "return (e4kwh * price_e5) // 100000")],
         tests=["tests/mp/test_tariff.py"]),
    # --- the amount stop's prediction ------------------------------------------------------
    dict(id="amount-stop-ignores-the-stop-lag",
         rule="the amount stop predicts the energy until the contactor opens (delay + stop lag)",
         edits=[("firmware/session.py",
                 "        h = delay + self.stop_lag_ms\n",
                 "        h = delay\n")],
         tests=["tests/test_limit_stop_lag.py::test_one_yuan_is_never_exceeded_when_the_contactor_takes_100_or_400_ms_to_open"]),
    dict(id="amount-stop-ignores-the-next-samples-cost",
         rule="the amount stop adds the predicted cost of the next sample to the amount so far",
         edits=[("firmware/session.py",
                 "            total = acc.amount() + c\n",
                 "            total = acc.amount()\n")],
         tests=["tests/mp/test_session.py::test_one_yuan_at_60kw_is_never_exceeded",
                "tests/mp/test_session.py::test_one_yuan_is_never_exceeded_at_7_120_and_250_kw"]),
    # --- the CRC range ---------------------------------------------------------------------
    dict(id="crc-covers-the-length-byte",
         rule="the CRC covers sequence..body, not the length byte (encoder and decoder alike)",
         edits=[("protocol/codec.py",
                 "c = crc16(memoryview(buf)[2:6 + n])",
                 "c = crc16(memoryview(buf)[1:6 + n])"),
                ("protocol/codec.py",
                 "want = crc16(mv[i + 2:i + n - 2])",
                 "want = crc16(mv[i + 1:i + n - 2])")],
         tests=["tests/mp/test_codec.py::test_official_login_reply_sample_decodes_and_reencodes",
                "tests/test_dissector.py::test_both_agree_on_the_official_samples"]),
]
