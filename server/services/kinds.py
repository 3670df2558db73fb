"""The kinds of base data (道路客运基础数据, guideline table 4-1) and their fields.

One declaration per kind serves the API (its JSON schemas in the OpenAPI document), the
checks of the base data service, and imports (the Chinese column headers of files from the
运政 system, how a cell becomes a value).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from server.schema import DAY, DIVISION, FEN, PHONE, array, integer, obj, string
from server.vocabulary import TICKET_TYPES

CODE = string(1, 24, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
NAME = string(1, 60)
TEL = string(5, 20, pattern=r"^\+?[0-9][0-9-]{4,19}$", description="phone number")
STATUS = string(enum=["active", "suspended", "withdrawn"],
                description="withdrawing is a status: nothing is deleted")
RATING = string(enum=["AAA", "AA", "A", "B"], description="考核等级")
HHMM = string(5, 5, pattern="^([01][0-9]|2[0-3]):[0-5][0-9]$", description="local HH:MM")
KM = integer(0, 5000)
PRICES = obj({t: FEN for t in TICKET_TYPES}, ["adult"],
             description="executed fare (adult) and discounted fares by ticket type, fen")
STOP = obj({"seq": integer(0, 60), "code": CODE, "name": NAME, "station_id": CODE,
            "city": string(1, 30), "division": DIVISION, "address": string(0, 200),
            "distance_km": KM, "boarding": {"type": "boolean"},
            "alighting": {"type": "boolean"}},
           ["name", "city", "division", "distance_km"],
           description="a stop (配客点): a station of the network or a pick-up point")
BAD_RECORD = obj({"date": DAY, "description": string(1, 200)}, ["date", "description"])


@dataclass(frozen=True)
class Kind:
    """One kind of base data: how its records are named, what they hold, who owns them."""

    name: str  # collection and path segment
    label: str
    key: tuple[str, ...]  # the fields its id is made of, fixed once created
    properties: dict[str, dict[str, Any]]
    required: tuple[str, ...]
    labels: dict[str, str]  # field → column header in files of the 运政 system
    # how a station's staff reach a record: the field naming the station, or "route"
    # (through the route's origin); None: read-only for them
    station_field: str | None = None
    pii: tuple[str, ...] = ()
    yuan: tuple[str, ...] = ()  # money fields (fen) written in yuan in files
    derived: tuple[str, ...] = field(default=())  # shown, never written by callers

    def record_id(self, values: dict[str, Any]) -> str:
        return "-".join(str(values[k]) for k in self.key)

    @property
    def editable(self) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.properties.items() if k not in self.key}

    @cached_property
    def create_schema(self) -> dict[str, Any]:
        return obj(self.properties, self.required)

    @cached_property
    def import_schema(self) -> dict[str, Any]:
        """A row of a file: a route's stops come as rows of their own."""
        return obj(self.properties, [k for k in self.required if k != "stops"])

    @cached_property
    def patch_schema(self) -> dict[str, Any]:
        return obj(self.editable, minProperties=1)


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("stations", "客运站", ("code",), {
        "code": CODE, "name": NAME, "grade": integer(1, 5, description="客运站级别"),
        "division": DIVISION, "city": string(1, 30), "address": string(0, 200),
        "complaint_phone": TEL, "lng": {"type": "number", "minimum": 73, "maximum": 136},
        "lat": {"type": "number", "minimum": 3, "maximum": 54}, "status": STATUS},
        ("code", "name", "grade", "division", "city", "lng", "lat"),
        {"code": "客运站代码", "name": "客运站名称", "grade": "客运站级别",
         "division": "所属行政区划", "city": "所在城市", "address": "客运站地址",
         "complaint_phone": "投诉电话", "lng": "经度", "lat": "纬度", "status": "状态"},
        station_field="_id"),
    Kind("carriers", "客运企业", ("code",), {
        "code": CODE, "name": NAME, "division": DIVISION, "address": string(0, 200),
        "phone": TEL, "licence_word": string(0, 30, description="经营许可证字"),
        "licence_no": string(1, 60, description="经营许可证号"),
        "quality_rating": RATING, "safety_rating": string(0, 20, description="安全评价"),
        "status": STATUS},
        ("code", "name", "division", "licence_no"),
        {"code": "客运企业代码", "name": "客运企业名称", "division": "所属行政区划",
         "address": "客运企业地址", "phone": "电话号码", "licence_word": "经营许可证字",
         "licence_no": "经营许可证号", "quality_rating": "质量信誉考核",
         "safety_rating": "安全评价", "status": "状态"}),
    Kind("vehicles", "车辆", ("plate",), {
        "plate": string(7, 8, pattern="^[\u4e00-\u9fa5][A-Z][A-Z0-9]{5,6}$",
                        description="车牌号码"),
        "carrier_id": CODE, "model": string(1, 40, description="厂牌型号"),
        "vehicle_type": string(1, 30, description="车辆类型"),
        "grade": string(enum=["high_3", "high_2", "high_1", "mid", "normal"],
                        description="车辆等级"),
        "manufactured_on": DAY, "seats": integer(5, 80, description="核定载客数"),
        "positioning_device": string(0, 40, description="卫星定位装置终端号"),
        "status": STATUS},
        ("plate", "carrier_id", "model", "grade", "seats"),
        {"plate": "车牌号码", "carrier_id": "客运企业代码", "model": "厂牌型号",
         "vehicle_type": "车辆类型", "grade": "车辆等级", "manufactured_on": "出厂日期",
         "seats": "核定载客数", "positioning_device": "卫星定位装置", "status": "状态"}),
    Kind("drivers", "驾驶员", ("licence_no",), {
        "licence_no": string(6, 30, pattern="^[A-Za-z0-9]+$", description="从业资格证号"),
        "name": string(1, 30), "gender": string(enum=["M", "F"]),
        "id_no": string(15, 20, description="身份证号 (stored encrypted, shown masked)"),
        "phone": PHONE, "carrier_id": CODE, "licence_class": string(enum=[
            "A1", "A2", "A3", "B1", "B2", "C1"]),
        "bad_records": array(BAD_RECORD, maxItems=100, description="不良行为记录"),
        "credit_rating": RATING, "status": STATUS},
        ("licence_no", "name", "carrier_id", "licence_class"),
        {"licence_no": "从业资格证号", "name": "姓名", "gender": "性别", "id_no": "身份证号",
         "phone": "电话", "carrier_id": "客运企业代码", "licence_class": "准驾车型",
         "credit_rating": "诚信考核", "status": "状态"},
        pii=("id_no", "phone")),
    Kind("routes", "班线", ("code",), {
        "code": CODE, "name": NAME, "grade": string(enum=["class_1", "class_2", "class_3",
                                                          "class_4"], description="线路等级"),
        "type": string(enum=["intercity", "county", "interprovincial", "rural"],
                       description="线路类型"),
        "origin_station_id": CODE, "destination_station_id": CODE,
        "highway_km": KM, "distance_km": integer(1, 5000, description="总里程 (from the "
                                                                       "stops when given)"),
        "carrier_ids": array(CODE, minItems=1, maxItems=20),
        "stops": array(STOP, minItems=2, maxItems=40, description="途经站点, in order"),
        "status": STATUS},
        ("code", "name", "grade", "type", "origin_station_id", "destination_station_id",
         "carrier_ids", "stops"),
        {"code": "线路代码", "name": "线路名称", "grade": "线路等级", "type": "线路类型",
         "origin_station_id": "起点站", "destination_station_id": "到达站",
         "highway_km": "高速里程", "distance_km": "总里程", "carrier_ids": "经营企业",
         "status": "状态"},
        station_field="origin_station_id"),
    Kind("stops", "配客点", ("route_id", "seq"), {
        "route_id": CODE, **STOP["properties"]},
        ("route_id", "seq", "name", "city", "division", "distance_km"),
        {"route_id": "线路代码", "seq": "序号", "code": "配客点代码", "name": "配客点名称",
         "station_id": "客运站代码", "city": "所在城市", "division": "所属行政区划",
         "address": "配客点地址", "distance_km": "里程", "boarding": "上客",
         "alighting": "下客"},
        station_field="route"),
    Kind("schedules", "班次", ("code",), {
        "code": CODE, "route_id": CODE, "station_id": CODE, "carrier_id": CODE,
        "departs_at_local": HHMM,
        "nature": string(enum=["regular", "seasonal"], description="班次性质"),
        "type": string(enum=["normal", "direct", "express", "sleeper"],
                       description="班次类型"),
        "seats": integer(5, 80), "vehicle_grade": string(enum=[
            "high_3", "high_2", "high_1", "mid", "normal"]), "status": STATUS},
        ("code", "route_id", "carrier_id", "departs_at_local", "seats"),
        {"code": "班次代码", "route_id": "线路代码", "station_id": "发车站",
         "carrier_id": "客运企业代码", "departs_at_local": "发车时间", "nature": "班次性质",
         "type": "班次类型", "seats": "座位数", "vehicle_grade": "车辆等级",
         "status": "状态"},
        station_field="station_id"),
    Kind("fares", "票价", ("route_id", "from_seq", "to_seq"), {
        "route_id": CODE, "from_seq": integer(0, 60), "to_seq": integer(1, 60),
        "guide_price": {**FEN, "minimum": 1,
                        "description": "政府指导价 (fen): no fare may exceed it"},
        "prices": PRICES, "station_fee": {**FEN, "description": "站务费 (fen), part of "
                                                                "the fare"}},
        ("route_id", "from_seq", "to_seq", "guide_price", "prices"),
        {"route_id": "线路代码", "from_seq": "上车站序号", "to_seq": "下车站序号",
         "guide_price": "政府指导价", "station_fee": "站务费",
         **{f"prices.{t}": label for t, label in (
             ("adult", "执行票价"), ("child", "儿童票价"), ("student", "学生票价"),
             ("senior", "老年票价"), ("military", "军人票价"), ("disabled", "残疾人票价"))}},
        station_field="route", yuan=("guide_price", "station_fee", *(
            f"prices.{t}" for t in TICKET_TYPES)), derived=("distance_km",)),
)}
