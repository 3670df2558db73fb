"""Shared vocabularies, defined once: the API schemas, the database validators and the
services all take their lists from here (SPEC §1 glossary)."""

from __future__ import annotations

# 车票种类: a fare exists per ticket type; child is 儿童票, not the free accompanied child
TICKET_TYPES = ("adult", "child", "student", "senior", "military", "disabled")
# 实名制 documents (validated by ``server.services.realname``)
ID_TYPES = ("resident_id", "passport", "hk_macau_permit", "taiwan_permit",
            "hmt_residence_permit", "foreign_permanent_residence")

# What a passenger's name, document number and contact phone read as once anonymized
# (``OrderBook.anonymize``): a fixed word, so every reader shows something and nothing of
# the person is left to match against.
ANONYMIZED = "已匿名"
