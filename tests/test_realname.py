"""Pure units: real-name documents and personal-data protection."""

from __future__ import annotations

import datetime as dt

import pytest

from server.errors import DomainError
from server.security.pii import PiiKeyError, PiiVault, mask_id, mask_name, mask_phone, new_key_spec
from server.services.realname import check_char, validate

TODAY = dt.date(2026, 11, 24)
SAMPLE = "11010519491231002X"  # the sample number of GB 11643's own examples


def make_id(prefix17: str) -> str:
    return prefix17 + check_char(prefix17)


def test_valid_resident_id_is_normalized_with_birth_date() -> None:
    doc = validate("resident_id", " 11010519491231002x ", TODAY)
    assert doc.id_no == SAMPLE and doc.birth_date == dt.date(1949, 12, 31)
    assert doc.age_on(TODAY) == 76
    other = make_id("44010620150601123")
    assert validate("resident_id", other, TODAY).age_on(TODAY) == 11


@pytest.mark.parametrize("bad", [
    "11010519491231002Y",  # not a digit or X
    "110105194912310021",  # wrong check character
    "1101051949123100",  # too short
    make_id("11010519490230002"),  # 30 February
    make_id("11010520270101002"),  # born in the future
    make_id("99010519491231002"),  # no such province
    make_id("81000019900101002"),  # Hong Kong prefix on a resident ID
])
def test_invalid_resident_ids(bad: str) -> None:
    with pytest.raises(DomainError) as info:
        validate("resident_id", bad, TODAY)
    assert info.value.code == "INVALID_ID_NUMBER" and info.value.details["field"] == "id_no"


def test_every_single_digit_change_breaks_the_check() -> None:
    for position in range(17):
        for digit in "0123456789":
            if digit == SAMPLE[position]:
                continue
            changed = SAMPLE[:position] + digit + SAMPLE[position + 1:]
            with pytest.raises(DomainError):
                validate("resident_id", changed, TODAY)


def test_other_documents() -> None:
    assert validate("passport", "E12345678", TODAY).id_no == "E12345678"
    assert validate("passport", "x1234567", TODAY).id_no == "X1234567"
    assert validate("hk_macau_permit", "H12345678", TODAY)
    assert validate("taiwan_permit", "12345678", TODAY)
    assert validate("hmt_residence_permit", make_id("81000019900101002"), TODAY)
    assert validate("foreign_permanent_residence", "USA123456789012", TODAY)
    assert validate("foreign_permanent_residence", make_id("93310019900101002"), TODAY)
    for id_type, bad in [("passport", "E1"), ("hk_macau_permit", "X12345678"),
                         ("taiwan_permit", "1234"), ("hmt_residence_permit", SAMPLE),
                         ("foreign_permanent_residence", "12345")]:
        with pytest.raises(DomainError):
            validate(id_type, bad, TODAY)
    with pytest.raises(DomainError) as info:
        validate("library_card", "1", TODAY)
    assert info.value.details["field"] == "id_type"


def vault() -> PiiVault:
    import base64
    import os

    index = base64.urlsafe_b64encode(os.urandom(32)).decode()
    return PiiVault.from_config(new_key_spec("k2") + "," + new_key_spec("k1"), index)


def test_encryption_round_trip_binds_the_field_and_rotates() -> None:
    v = vault()
    sealed = v.encrypt("id_no", SAMPLE)
    assert SAMPLE not in sealed and sealed.startswith("v1.k2.")
    assert v.decrypt("id_no", sealed) == SAMPLE
    assert v.encrypt("id_no", SAMPLE) != sealed  # a fresh nonce every time
    with pytest.raises(PiiKeyError):
        v.decrypt("phone", sealed)  # moved to another field: refused
    tampered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(PiiKeyError):
        v.decrypt("id_no", tampered)
    # rotation: old values still open; new ones use the current key
    old = PiiVault({"k1": v.keys["k1"]}, v.index_key).encrypt("phone", "13812345678")
    assert v.decrypt("phone", old) == "13812345678" and v.needs_rotation(old)


def test_blind_index_is_stable_keyed_and_namespaced() -> None:
    v, w = vault(), vault()
    assert v.index("phone", "13812345678") == v.index("phone", "13812345678")
    assert v.index("phone", "13812345678") != w.index("phone", "13812345678")
    assert v.index("id:resident_id", SAMPLE) != v.index("id:passport", SAMPLE)


def test_masks() -> None:
    assert mask_id("440106199001011234") == "4401**********1234"
    assert mask_id("E12345678") == "E******78"
    assert mask_phone("13812345678") == "138****5678"
    assert mask_name("张三丰") == "张*丰" and mask_name("李四") == "李*"


def test_bad_keys_are_refused() -> None:
    with pytest.raises(PiiKeyError):
        PiiVault.from_config("k1:short", "x" * 44)
    with pytest.raises(PiiKeyError):
        PiiVault.from_config(new_key_spec(), "")


FULL_WIDTH = str.maketrans("0123456789X", "０１２３４５６７８９Ｘ")


def test_every_spelling_of_a_number_is_one_number() -> None:
    """Full-width digits (a phone keyboard's) normalize to the ASCII number; digits of
    other scripts are refused, for every document type."""
    assert validate("resident_id", SAMPLE.translate(FULL_WIDTH), TODAY).id_no == SAMPLE
    assert validate("passport", "Ｅ１２３４５６７８", TODAY).id_no == "E12345678"
    arabic = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
    for id_type, number in (("resident_id", SAMPLE), ("passport", "E12345678"),
                            ("hk_macau_permit", "H12345678"), ("taiwan_permit", "12345678"),
                            ("hmt_residence_permit", make_id("81000019800101123")),
                            ("foreign_permanent_residence", "ABC123456789012")):
        assert validate(id_type, number, TODAY).id_no == number
        assert validate(id_type, number.translate(FULL_WIDTH), TODAY).id_no == number
        with pytest.raises(DomainError) as err:
            validate(id_type, number.translate(arabic), TODAY)
        assert err.value.code == "INVALID_ID_NUMBER", id_type
