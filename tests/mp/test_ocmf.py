# OCMF-signed bills, the pile's half (issue 19 item 6), on both
# interpreters: the P-256 signer against RFC 6979's own test vector, its
# step-wise form (one point operation per step, so the control loop runs
# between them), and the one canonical payload text. pyocmf's verdict on the
# records is tests/test_ocmf_verify.py.
from protocol import ocmf, p256

# RFC 6979 A.2.5: P-256, SHA-256, message "sample".
_D = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
_UX = 0x60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6
_UY = 0x7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299
_R = 0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716
_S = 0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8


def _bill():
    return {"serial": "55031412782305012405010800000007", "pile": "55031412782305", "gun": "01",
            "start_time": 767865600, "end_time": 767869200, "meter_start": 1001000,
            "meter_stop": 1124456, "card": "00000000D14B0A54", "vin": "LSVAU2180N2183294"}


def test_the_signer_gives_rfc6979s_key_and_signature():
    pub = p256.public_key(_D)
    assert pub == b"\x04" + _UX.to_bytes(32, "big") + _UY.to_bytes(32, "big")
    assert p256.sign(_D, b"sample") == (_R, _S)
    assert p256.verify(pub, b"sample", _R, _S)
    assert not p256.verify(pub, b"sample!", _R, _S)
    assert not p256.verify(pub, b"sample", _R, (_S + 1) % p256.N)


def test_signing_in_steps_gives_the_same_signature_one_point_operation_at_a_time():
    out = [None]
    steps = 0
    for _ in p256.sign_steps(_D, b"sample", out):
        steps += 1
    assert out[0] == (_R, _S)
    assert steps == 288          # one per bit of k, 16 per inverse: the loop runs between them


def test_der_forms():
    sig = p256.der_signature(_R, _S)
    # SEQUENCE of two INTEGERs, each 33 bytes (a 00 before a high bit)
    assert sig[0] == 0x30 and sig[1] == len(sig) - 2 == 70 and sig[2] == 2 and sig[3] == 33
    assert p256.der_signature(1, 2) == b"\x30\x06\x02\x01\x01\x02\x01\x02"
    der = p256.spki_der(p256.public_key(_D))
    assert len(der) == 91 and der[-65] == 4
    try:
        p256.spki_der(b"\x04" + bytes(10))
        raise AssertionError("a short point was taken")
    except ValueError:
        pass


def test_keygen_stays_in_the_group():
    assert p256.keygen(bytes(32)) == 1
    assert p256.keygen(b"\xff" * 32) < p256.N
    try:
        p256.keygen(bytes(31))
        raise AssertionError("31 bytes of entropy taken")
    except ValueError:
        pass


def test_the_payload_text_is_one_fixed_string_without_ids_unless_asked():
    text = ocmf.payload(_bill(), fw="PC-0.1")
    assert text == (
        '{"FV":"1.0","GI":"pile-companion","GS":"55031412782305","GV":"PC-0.1","PG":"T7",'
        '"MV":"pile-companion","MM":"pile-companion","MS":"55031412782305-01","MF":"PC-0.1",'
        '"IS":false,"IL":"NONE","IF":[],"IT":"NONE","ID":"",'
        '"TT":"serial 55031412782305012405010800000007","RD":['
        '{"TM":"2024-05-01T08:00:00,000+0800 S","TX":"B","RV":100.1000,"RI":"1-b:1.8.0",'
        '"RU":"kWh","RT":"DC","EF":"","ST":"G"},'
        '{"TM":"2024-05-01T09:00:00,000+0800 S","TX":"E","RV":112.4456,"RI":"1-b:1.8.0",'
        '"RU":"kWh","RT":"DC","EF":"","ST":"G"}]}')
    assert "D14B0A54" not in text and "LSVAU" not in text
    assert '"ID":"00000000D14B0A54"' in ocmf.payload(_bill(), fw="PC-0.1", ids=True)
    rec = ocmf.record(text, p256.der_signature(_R, _S))
    assert rec.startswith("OCMF|{") and rec.count("|") == 2
    assert rec.endswith('"}') and '"SA":"ECDSA-secp256r1-SHA256"' in rec


def test_a_field_that_would_break_the_record_is_refused():
    for bad in ("PC|0.1", 'PC"0.1', "PC\\0.1", "PC\n"):
        try:
            ocmf.payload(_bill(), fw=bad)
            raise AssertionError("%r taken" % bad)
        except ValueError:
            pass
