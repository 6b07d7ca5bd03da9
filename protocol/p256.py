# ECDSA on NIST P-256 (secp256r1) with SHA-256, for OCMF-signed bills
# (issue 19 item 6): the pile signs, anyone verifies with its public key.
# Pure integer arithmetic, MicroPython and CPython alike: no bit_length, no
# pow(a, -1, m) (MicroPython returns 0 for it: inverses are a^(m-2) mod m),
# hashlib.sha256 and protocol/sign.py's HMAC only.
#
#   d = keygen(entropy32)               private scalar from 32 random bytes
#   pub = public_key(d)                 b"\x04" | X | Y  (65 bytes)
#   spki_der(pub)                       DER SubjectPublicKeyInfo (OCMF's PK form)
#   r, s = sign(d, msg)                 RFC 6979 deterministic k
#   der_signature(r, s)                 DER SEQUENCE{INTEGER r, INTEGER s}
#   for _ in sign_steps(d, msg, out): pass   the same, one point operation per step
#                                       (288: 256 bits, 2 x 16 for the two inverses)
#
# Deterministic k (RFC 6979) means the same bill always gets the same
# signature: the pile need not store it, it can sign again at any time.
# Not constant-time (Python integers): a signing key on a pile whose timing
# can be measured from outside by an attacker is exposed; say so.
import hashlib

try:
    import binascii
except ImportError:  # pragma: no cover
    import ubinascii as binascii

from protocol.sign import hmac_parts

P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

# DER SubjectPublicKeyInfo header for an uncompressed P-256 point:
# SEQUENCE { SEQUENCE { OID ecPublicKey, OID prime256v1 }, BIT STRING 04|X|Y }
_SPKI = binascii.unhexlify("3059301306072a8648ce3d020106082a8648ce3d030107034200")


def _i2b(x):
    return x.to_bytes(32, "big")


def _b2i(b):
    return int.from_bytes(b, "big")


def _double(X, Y, Z):
    # Jacobian doubling for a = -3.
    if Z == 0 or Y == 0:
        return 0, 1, 0
    delta = Z * Z % P
    gamma = Y * Y % P
    beta = X * gamma % P
    alpha = 3 * (X - delta) * (X + delta) % P
    X3 = (alpha * alpha - 8 * beta) % P
    Z3 = ((Y + Z) * (Y + Z) - gamma - delta) % P
    Y3 = (alpha * (4 * beta - X3) - 8 * gamma * gamma) % P
    return X3, Y3, Z3


def _add(X1, Y1, Z1, X2, Y2, Z2):
    if Z1 == 0:
        return X2, Y2, Z2
    if Z2 == 0:
        return X1, Y1, Z1
    Z1Z1 = Z1 * Z1 % P
    Z2Z2 = Z2 * Z2 % P
    U1 = X1 * Z2Z2 % P
    U2 = X2 * Z1Z1 % P
    S1 = Y1 * Z2 * Z2Z2 % P
    S2 = Y2 * Z1 * Z1Z1 % P
    if U1 == U2:
        if S1 != S2:
            return 0, 1, 0
        return _double(X1, Y1, Z1)
    H = (U2 - U1) % P
    R = (S2 - S1) % P
    HH = H * H % P
    HHH = H * HH % P
    V = U1 * HH % P
    X3 = (R * R - HHH - 2 * V) % P
    Y3 = (R * (V - X3) - S1 * HHH) % P
    Z3 = H * Z1 * Z2 % P
    return X3, Y3, Z3


def _affine(X, Y, Z):
    if Z == 0:
        raise ValueError("point at infinity")
    zi = pow(Z, P - 2, P)
    zi2 = zi * zi % P
    return X * zi2 % P, Y * zi2 * zi % P


_INV_BITS = 16      # exponent bits per step of a step-wise inverse (~ one point operation)


def _inv_steps(a, m, out):
    """a^-1 mod m (m prime) as a^(m-2), square and multiply, a yield every
    _INV_BITS bits: the builtin pow() would make one step some 30 point
    operations long. out[0] = the inverse."""
    e = m - 2
    r = 1
    for i in range(255, -1, -1):
        r = r * r % m
        if (e >> i) & 1:
            r = r * a % m
        if i % _INV_BITS == 0:
            yield
    out[0] = r


def _mul_steps(k, x, y, out):
    """k * (x, y), one doubling (and add) per step, then the inverse of Z in
    steps; out[0] = the affine point."""
    X, Y, Z = 0, 1, 0
    for i in range(255, -1, -1):
        X, Y, Z = _double(X, Y, Z)
        if (k >> i) & 1:
            X, Y, Z = _add(X, Y, Z, x, y, 1)
        yield
    if Z == 0:
        raise ValueError("point at infinity")
    zi = [None]
    for _ in _inv_steps(Z, P, zi):
        yield
    zi = zi[0]
    zi2 = zi * zi % P
    out[0] = (X * zi2 % P, Y * zi2 * zi % P)


def _mul(k, x, y):
    out = [None]
    for _ in _mul_steps(k, x, y, out):
        pass
    return out[0]


def keygen(entropy):
    """A private scalar in [1, N-1] from 32 random bytes."""
    if len(entropy) != 32:
        raise ValueError("keygen needs 32 random bytes")
    return _b2i(entropy) % (N - 1) + 1


def public_key(d):
    x, y = _mul(d, GX, GY)
    return b"\x04" + _i2b(x) + _i2b(y)


def on_curve(pub):
    """True if pub (65 bytes 04|X|Y) is a point of P-256."""
    if len(pub) != 65 or pub[0] != 4:
        return False
    x, y = _b2i(pub[1:33]), _b2i(pub[33:65])
    return x < P and y < P and (y * y - (x * x * x - 3 * x + B)) % P == 0


def point_from_der_or_raw(b):
    """The 65-byte point of a public key given as DER SubjectPublicKeyInfo
    (OCMF's form, what the pile's console shows) or as the bare point;
    ValueError unless it is a P-256 point."""
    b = bytes(b)
    if len(b) == len(_SPKI) + 65 and b[:len(_SPKI)] == _SPKI:
        b = b[len(_SPKI):]
    if not on_curve(b):
        raise ValueError("not a P-256 public key (DER SubjectPublicKeyInfo or 04|X|Y, on the curve)")
    return b


def spki_der(pub):
    if len(pub) != 65 or pub[0] != 4:
        raise ValueError("an uncompressed P-256 point is 65 bytes starting 04")
    return _SPKI + bytes(pub)


def _rfc6979_ks(d, h1):
    # RFC 6979 section 3.2 with HMAC-SHA256; qlen = hlen = 256 bits.
    x = _i2b(d)
    h = _i2b(_b2i(h1) % N)
    V = b"\x01" * 32
    K = b"\x00" * 32
    K = hmac_parts(K, (V, b"\x00", x, h))
    V = hmac_parts(K, (V,))
    K = hmac_parts(K, (V, b"\x01", x, h))
    V = hmac_parts(K, (V,))
    while True:
        V = hmac_parts(K, (V,))
        k = _b2i(V)
        if 1 <= k < N:
            yield k
        K = hmac_parts(K, (V, b"\x00"))
        V = hmac_parts(K, (V,))


def sign_steps(d, msg, out):
    """ECDSA-SHA256 of msg (bytes) with private scalar d, one point operation
    per step (a pile's control loop runs between steps); out[0] = (r, s)."""
    h1 = hashlib.sha256(msg).digest()
    z = _b2i(h1) % N
    for k in _rfc6979_ks(d, h1):
        pt = [None]
        for _ in _mul_steps(k, GX, GY, pt):
            yield
        r = pt[0][0] % N
        if r == 0:
            continue
        ki = [None]
        for _ in _inv_steps(k, N, ki):
            yield
        s = ki[0] * (z + r * d) % N
        if s == 0:
            continue
        out[0] = (r, s)
        return


def sign(d, msg):
    out = [None]
    for _ in sign_steps(d, msg, out):
        pass
    return out[0]


def _der_int(v):
    b = _i2b(v)
    i = 0
    while i < 31 and b[i] == 0:
        i += 1
    b = b[i:]
    if b[0] & 0x80:
        b = b"\x00" + b
    return b"\x02" + bytes((len(b),)) + b


def der_signature(r, s):
    body = _der_int(r) + _der_int(s)
    return b"\x30" + bytes((len(body),)) + body


def verify(pub, msg, r, s):
    """ECDSA-SHA256 verification (for tests and the console; the platform
    uses a well-kept library)."""
    if not (1 <= r < N and 1 <= s < N):
        return False
    x, y = _b2i(pub[1:33]), _b2i(pub[33:65])
    z = _b2i(hashlib.sha256(msg).digest()) % N
    w = pow(s, N - 2, N)
    X1, Y1 = _mul(z * w % N, GX, GY)
    X2, Y2 = _mul(r * w % N, x, y)
    X, Y, Z = _add(X1, Y1, 1, X2, Y2, 1)
    if Z == 0:
        return False
    return _affine(X, Y, Z)[0] % N == r
