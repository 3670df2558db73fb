"""The signed QR payload of an e-ticket (电子客票二维码).

27 bytes, then an Ed25519 signature (64 bytes) over them, base45-encoded (RFC 9285, the QR
alphanumeric alphabet, so the code fits a small QR at low density) behind ``KY1:``:

    version  u8      1
    kid      u32     the signing key
    ticket   9 bytes the ticket number (20 decimal digits) as an unsigned integer
    dep      u32     first 4 bytes of SHA-256(departure id): binds the code to its trip
    seat     u8
    departs  u32     departure time, Unix seconds (gates judge too early / departed offline)
    step     u32     Unix time // 30: the code changes every 30 s; a gate takes this step
                     and the one before, so a screenshot soon stops working

Nothing personal is in it. Signing keys rotate by key id (``server.services.gate``).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PREFIX = "KY1:"
VERSION = 1
STEP_SECONDS = 30
_LAYOUT = struct.Struct(">BI9sIBII")
SIGNED_LEN = _LAYOUT.size  # 27
CODE_LEN = SIGNED_LEN + 64

B45 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_B45_INDEX = {c: i for i, c in enumerate(B45)}


class CodeError(Exception):
    """Not a code of ours: bad encoding, bad layout, unknown key or a bad signature."""


def b45encode(data: bytes) -> str:
    out = []
    for i in range(0, len(data) - 1, 2):
        n = data[i] * 256 + data[i + 1]
        c, n = divmod(n, 45 * 45)
        b, a = divmod(n, 45)
        out += [B45[a], B45[b], B45[c]]
    if len(data) % 2:
        b, a = divmod(data[-1], 45)
        out += [B45[a], B45[b]]
    return "".join(out)


def b45decode(text: str) -> bytes:
    try:
        values = [_B45_INDEX[c] for c in text]
    except KeyError:
        raise CodeError("not base45") from None
    out = bytearray()
    for i in range(0, len(values), 3):
        chunk = values[i:i + 3]
        if len(chunk) == 3:
            n = chunk[0] + chunk[1] * 45 + chunk[2] * 45 * 45
            if n > 0xFFFF:
                raise CodeError("not base45")
            out += n.to_bytes(2, "big")
        elif len(chunk) == 2:
            n = chunk[0] + chunk[1] * 45
            if n > 0xFF:
                raise CodeError("not base45")
            out.append(n)
        else:
            raise CodeError("not base45")
    return bytes(out)


def departure_hash(departure_id: str) -> int:
    return int.from_bytes(hashlib.sha256(departure_id.encode()).digest()[:4], "big")


def step_at(unix_seconds: float) -> int:
    return int(unix_seconds // STEP_SECONDS)


@dataclass(frozen=True)
class TicketCode:
    kid: int
    ticket_no: str
    departure_hash: int
    seat: int
    departs_at: int
    step: int

    def pack(self) -> bytes:
        return _LAYOUT.pack(VERSION, self.kid, int(self.ticket_no).to_bytes(9, "big"),
                            self.departure_hash, self.seat, self.departs_at, self.step)


def sign(code: TicketCode, key: Ed25519PrivateKey) -> str:
    body = code.pack()
    return PREFIX + b45encode(body + key.sign(body))


def parse(text: str) -> tuple[TicketCode, bytes, bytes]:
    """(fields, signed bytes, signature) of a code; CodeError if it is not shaped like one."""
    text = text.strip()
    if not text.startswith(PREFIX):
        raise CodeError("prefix")
    raw = b45decode(text[len(PREFIX):])
    if len(raw) != CODE_LEN:
        raise CodeError("length")
    body, signature = raw[:SIGNED_LEN], raw[SIGNED_LEN:]
    version, kid, ticket, dep, seat, departs, step = _LAYOUT.unpack(body)
    if version != VERSION:
        raise CodeError("version")
    return (TicketCode(kid, f"{int.from_bytes(ticket, 'big'):020d}", dep, seat, departs, step),
            body, signature)


def verify(text: str, keys: dict[int, Ed25519PublicKey]) -> TicketCode:
    """The fields of a code whose signature checks out under its key id; CodeError else."""
    code, body, signature = parse(text)
    key = keys.get(code.kid)
    if key is None:
        raise CodeError("unknown key")
    try:
        key.verify(signature, body)
    except InvalidSignature:
        raise CodeError("signature") from None
    return code
