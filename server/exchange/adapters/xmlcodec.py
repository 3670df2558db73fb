"""Wire format of the legacy XML station dialect: GBK-encoded XML, MD5-signed.

A message is ``<request>`` or ``<response>`` with a ``<head>`` of flat fields and a ``<body>``
whose children are flat fields or lists (``<trips list="1"><item>…</item></trips>``). Money is fen
written as a string; times are local ``yyyyMMddHHmmss``.

Signing: sort the flat fields of head and body except ``sign`` (lists are represented by the
MD5 of their canonical XML), join as ``k=v`` with ``&``, append ``&key=<secret>``, MD5,
upper-case hex. Requests and responses are both signed, and the receiver checks the
timestamp window too, so a captured message cannot be replayed later.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import xml.etree.ElementTree as ET  # building only; parsing goes through defusedxml
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as safe_fromstring

from server.clock import LOCAL_TZ

ENCODING = "GBK"
TIME_FORMAT = "%Y%m%d%H%M%S"
MAX_SKEW = dt.timedelta(minutes=5)

Body = dict[str, Any]  # values: str, or list[dict[str, str]]
_DECLARATION = re.compile(rb"^\s*<\?xml[^>]*\?>")
_ENCODING_ATTR = re.compile(rb"encoding=[\"']([A-Za-z0-9_-]+)[\"']")


class XmlFormatError(ValueError):
    """Not a well-formed message of this dialect."""


def local_time(value: dt.datetime) -> str:
    return value.astimezone(LOCAL_TZ).strftime(TIME_FORMAT)


def parse_local_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, TIME_FORMAT).replace(tzinfo=LOCAL_TZ)


def _list_digest(items: list[dict[str, str]]) -> str:
    canon = "|".join("&".join(f"{k}={item[k]}" for k in sorted(item)) for item in items)
    return hashlib.md5(canon.encode(ENCODING)).hexdigest()  # noqa: S324 - the dialect's choice


def sign(head: dict[str, str], body: Body, secret: str) -> str:
    """The dialect's signature over head and body."""
    fields: dict[str, str] = {k: v for k, v in head.items() if k != "sign"}
    for key, value in body.items():
        fields[f"body.{key}"] = _list_digest(value) if isinstance(value, list) else str(value)
    text = "&".join(f"{k}={fields[k]}" for k in sorted(fields)) + f"&key={secret}"
    return hashlib.md5(text.encode(ENCODING)).hexdigest().upper()  # noqa: S324


def verify(head: dict[str, str], body: Body, secret: str,
           now: dt.datetime | None = None) -> bool:
    """Signature matches (constant time) and the timestamp is within five minutes."""
    expected = sign(head, body, secret)
    if not hmac.compare_digest(expected, head.get("sign", "")):
        return False
    try:
        sent = parse_local_time(head.get("timestamp", ""))
    except ValueError:
        return False
    return abs((now or dt.datetime.now(dt.UTC)) - sent) <= MAX_SKEW


def encode(root: str, head: dict[str, str], body: Body) -> bytes:
    """Serialize a message as GBK XML."""
    elem = ET.Element(root)
    head_el = ET.SubElement(elem, "head")
    for key, value in head.items():
        ET.SubElement(head_el, key).text = str(value)
    body_el = ET.SubElement(elem, "body")
    for key, value in body.items():
        child = ET.SubElement(body_el, key)
        if isinstance(value, list):
            child.set("list", "1")
            for item in value:
                item_el = ET.SubElement(child, "item")
                for k, v in item.items():
                    ET.SubElement(item_el, k).text = str(v)
        else:
            child.text = str(value)
    return ET.tostring(elem, encoding=ENCODING, xml_declaration=True)


def decode(data: bytes) -> tuple[str, dict[str, str], Body]:
    """Parse a message; XmlFormatError if it is not one."""
    # expat cannot read multi-byte encodings such as GBK: decode by the declaration first
    declared = _DECLARATION.match(data)
    encoding = ENCODING
    if declared:
        found = _ENCODING_ATTR.search(declared.group(0))
        encoding = found.group(1).decode("ascii") if found else "UTF-8"
        data = data[declared.end():]
    try:
        text = data.decode(encoding)
    except (LookupError, UnicodeDecodeError) as exc:
        raise XmlFormatError(f"not {encoding}: {exc}") from None
    try:
        elem = safe_fromstring(text, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException) as exc:
        raise XmlFormatError(str(exc)) from None
    head_el, body_el = elem.find("head"), elem.find("body")
    if head_el is None or body_el is None:
        raise XmlFormatError("missing head or body")
    head = {child.tag: (child.text or "") for child in head_el}
    body: Body = {}
    for child in body_el:
        if child.get("list") == "1":
            body[child.tag] = [{f.tag: (f.text or "") for f in item}
                               for item in child.findall("item")]
        else:
            body[child.tag] = child.text or ""
    return elem.tag, head, body
