"""The demo province: a generated, plausible and reproducible 广东省 road-passenger network.

Cities, their GB/T 2260 codes and the station names are a small hand-kept table; everything
else (carriers, fleet, drivers, routes with stops, fares, schedules) is generated from a
fixed random seed, so two runs produce the same network. Departures are planned for the next
ten days at every start (see ``services.planning``). Loading is idempotent: documents are
upserted by their natural keys and a marker in ``meta`` records completion.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import math
import random
from dataclasses import dataclass
from typing import Any

from pymongo import ReplaceOne, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pypinyin import Style, lazy_pinyin

from server.clock import LOCAL_TZ
from server.config import Settings
from server.security.passwords import hash_password
from server.security.principal import STAFF_ROLES
from server.services.planning import plan_sale_window
from server.services.rules import RuleService
from server.storage.network import KINDS as NETWORK_KINDS

log = logging.getLogger(__name__)

SEED = 20260101
DEMO_VERSION = 3  # 3: base data starts at version 1
# demo stations whose seats live in their own station system (a simulator under `make run`)
DEMO_VENDORS = {"440304001": "rest", "440303001": "rest", "440507001": "xml",
                "441402001": "xml"}
ROUTE_COUNT = 72


@dataclass(frozen=True)
class City:
    name: str
    division: str  # GB/T 2260, city level
    lat: float
    lng: float
    plate: str  # 粤A… letter


CITIES = [
    City("广州", "440100", 23.1291, 113.2644, "A"),
    City("深圳", "440300", 22.5431, 114.0579, "B"),
    City("珠海", "440400", 22.2707, 113.5767, "C"),
    City("汕头", "440500", 23.3541, 116.6819, "D"),
    City("佛山", "440600", 23.0215, 113.1214, "E"),
    City("韶关", "440200", 24.8108, 113.5972, "F"),
    City("湛江", "440800", 21.2707, 110.3594, "G"),
    City("肇庆", "441200", 23.0469, 112.4651, "H"),
    City("江门", "440700", 22.5787, 113.0819, "J"),
    City("茂名", "440900", 21.6629, 110.9254, "K"),
    City("惠州", "441300", 23.1115, 114.4158, "L"),
    City("梅州", "441400", 24.2886, 116.1226, "M"),
    City("河源", "441600", 23.7435, 114.7005, "P"),
    City("阳江", "441700", 21.8579, 111.9827, "Q"),
    City("清远", "441800", 23.6817, 113.0560, "R"),
    City("东莞", "441900", 23.0207, 113.7518, "S"),
    City("中山", "442000", 22.5176, 113.3926, "T"),
    City("潮州", "445100", 23.6567, 116.6226, "U"),
]
_CITY = {c.name: c for c in CITIES}

# (city, station name, grade, county-level division)
STATIONS = [
    ("广州", "广州市汽车客运站", 1, "440111"), ("广州", "广州天河客运站", 1, "440106"),
    ("广州", "广东省汽车客运站", 1, "440104"), ("广州", "广州芳村客运站", 2, "440103"),
    ("广州", "番禺市桥汽车站", 2, "440113"),
    ("深圳", "深圳福田汽车客运站", 1, "440304"), ("深圳", "深圳罗湖汽车站", 1, "440303"),
    ("深圳", "深圳宝安汽车站", 2, "440306"), ("深圳", "深圳龙岗长途汽车客运站", 2, "440307"),
    ("深圳", "深圳南山汽车站", 3, "440305"),
    ("珠海", "珠海拱北汽车客运站", 1, "440402"), ("珠海", "珠海香洲长途站", 2, "440402"),
    ("珠海", "斗门汽车站", 3, "440403"),
    ("汕头", "汕头汽车客运中心站", 1, "440507"), ("汕头", "汕头金平汽车站", 3, "440511"),
    ("佛山", "佛山汽车站", 1, "440604"), ("佛山", "南海汽车站", 2, "440605"),
    ("佛山", "顺德客运站", 2, "440606"),
    ("韶关", "韶关汽车客运站", 2, "440204"), ("韶关", "韶关西河汽车站", 3, "440203"),
    ("湛江", "湛江汽车客运中心站", 1, "440802"), ("湛江", "霞山汽车站", 2, "440803"),
    ("肇庆", "肇庆汽车客运站", 2, "441202"),
    ("江门", "江门汽车客运站", 2, "440703"),
    ("茂名", "茂名汽车客运站", 2, "440902"), ("茂名", "高州汽车客运站", 3, "440981"),
    ("惠州", "惠州汽车总站", 1, "441302"), ("惠州", "惠阳淡水汽车客运站", 3, "441303"),
    ("梅州", "梅州汽车客运站", 2, "441402"), ("梅州", "兴宁汽车站", 3, "441481"),
    ("河源", "河源汽车总站", 2, "441602"),
    ("阳江", "阳江汽车客运站", 2, "441702"),
    ("清远", "清远汽车客运站", 2, "441802"),
    ("东莞", "东莞汽车总站", 1, "441900"), ("东莞", "常平汽车客运站", 3, "441900"),
    ("中山", "中山汽车总站", 1, "442000"),
    ("潮州", "潮州汽车客运站", 2, "445102"),
]

# (model, seats, vehicle grade)
VEHICLE_MODELS = [
    ("宇通ZK6122H", 53, "high_1"), ("金龙XMQ6118", 49, "high_1"), ("海格KLQ6125", 51, "high_1"),
    ("宇通ZK6907", 39, "high_2"), ("金旅XML6907", 37, "high_2"), ("金龙XMQ6802", 33, "high_3"),
    ("中通LCK6809", 31, "mid"), ("宇通ZK6609", 19, "mid"),
]
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗梁"
GIVEN = ["建国", "志强", "伟", "海", "敏", "国华", "磊", "洋", "勇", "军", "杰", "涛", "明",
         "超", "华", "平", "刚", "辉", "鹏", "斌"]
CARRIER_SUFFIXES = ["汽车运输集团有限公司", "公共汽车运输有限公司", "粤运汽车运输有限公司"]
# fare of each ticket type as a share of the adult fare (basis points)
TICKET_SHARES = {"adult": 10000, "child": 5000, "student": 7500, "senior": 5000,
                 "military": 5000, "disabled": 5000}
STATION_FEE = {1: 150, 2: 100, 3: 50}  # fen per ticket, part of the fare
FARES_EFFECTIVE = dt.datetime(2026, 1, 1, tzinfo=LOCAL_TZ).astimezone(dt.UTC)
DEMO_OUTLETS = [("OUT440106001", "天河路代售点", "440106", 500_000),
                ("OUT440304001", "福田口岸代售点", "440304", 300_000),
                ("OUT440604001", "禅城祖庙代售点", "440604", 200_000)]
# staff scope of each demo user
DEMO_SCOPES: dict[str, dict[str, str]] = {
    "authority": {"region": "440100"},
    "gate": {"station_id": "440111001"}, "kiosk": {"station_id": "440111001"},
    "station_staff": {"station_id": "440111001"}, "agent": {"outlet_id": "OUT440106001"},
}


def km_between(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance in km between (lat, lng) points."""
    lat1, lng1, lat2, lng2 = map(math.radians, (*a, *b))
    h = (math.sin((lat2 - lat1) / 2) ** 2
         + math.cos(lat1) * math.cos(lat2) * math.sin((lng2 - lng1) / 2) ** 2)
    return 2 * 6371 * math.asin(math.sqrt(h))


def road_km(a: tuple[float, float], b: tuple[float, float]) -> int:
    """Road distance estimate: great circle times a detour factor, at least 5 km."""
    return max(5, round(km_between(a, b) * 1.25))


def adult_fare(distance_km: int) -> int:
    """Executed adult fare in fen: a per-km rate plus a base, rounded to whole yuan."""
    return max(500, round(distance_km * 0.27 + 6 ) * 100)


def _share(adult: int, basis_points: int) -> int:
    """A discounted fare, rounded down to 50 fen."""
    return adult * basis_points // 10000 // 50 * 50


def _pinyin(text: str) -> tuple[str, str]:
    syllables = lazy_pinyin(text)
    initials = lazy_pinyin(text, style=Style.FIRST_LETTER)
    return "".join(syllables).lower(), "".join(initials).lower()


def generate(today: dt.date | None = None) -> dict[str, list[dict[str, Any]]]:
    """The whole static network (no departures): same seed, same documents."""
    rng = random.Random(SEED)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in (
        "stations", "carriers", "vehicles", "drivers", "routes", "stops", "schedules", "fares",
        "outlets")}

    # stations
    seq_by_division: dict[str, int] = {}
    stations = []
    for city_name, name, grade, division in STATIONS:
        city = _CITY[city_name]
        seq_by_division[division] = seq_by_division.get(division, 0) + 1
        code = f"{division}{seq_by_division[division]:03d}"
        lat = round(city.lat + rng.uniform(-0.06, 0.06), 6)
        lng = round(city.lng + rng.uniform(-0.06, 0.06), 6)
        pinyin, initials = _pinyin(name)
        city_pinyin, city_initials = _pinyin(city.name)
        doc = {"_id": code, "code": code, "name": name, "grade": grade, "division": division,
               "city": city.name, "city_division": city.division,
               "city_pinyin": city_pinyin, "city_initials": city_initials,
               "address": f"广东省{city.name}市{name}", "name_pinyin": pinyin,
               "name_initials": initials,
               "location": {"type": "Point", "coordinates": [lng, lat]},
               "system": {"vendor": DEMO_VENDORS.get(code, "native")}, "status": "active",
               "updated_at": now}
        stations.append(doc)
    out["stations"] = stations

    # carriers: one per city for the first twelve cities, plus two province-wide groups
    carriers = []
    for i, city in enumerate(CITIES[:12]):
        suffix = CARRIER_SUFFIXES[i % len(CARRIER_SUFFIXES)]
        carriers.append({"_id": f"C{city.division}01", "code": f"C{city.division}01",
                         "name": f"{city.name}市{suffix}", "division": city.division,
                         "licence_no": f"粤交运管许可{city.plate}字{440000 + i * 7:06d}号",
                         "status": "active", "home_city": city.name})
    for j, name in enumerate(["广东省汽车运输集团有限公司", "广东粤运交通股份有限公司"]):
        carriers.append({"_id": f"C44000{j + 1}", "code": f"C44000{j + 1}", "name": name,
                         "division": "440000", "licence_no": f"粤交运管许可字{450001 + j}号",
                         "status": "active", "home_city": ""})
    out["carriers"] = carriers

    # vehicles and drivers
    plates: set[str] = set()
    for carrier in carriers:
        city = _CITY.get(carrier["home_city"]) or rng.choice(CITIES)
        for _ in range(13):
            model, seats, grade = rng.choice(VEHICLE_MODELS)
            while True:
                plate = f"粤{city.plate}{rng.randint(10000, 99999)}"
                if plate not in plates:
                    plates.add(plate)
                    break
            out["vehicles"].append({"_id": plate, "plate": plate, "carrier_id": carrier["_id"],
                                    "model": model, "seats": seats, "grade": grade,
                                    "status": "active"})
        for k in range(20):
            licence = f"GD{carrier['code'][1:5]}{k:02d}{rng.randint(100000, 999999)}"
            out["drivers"].append({"_id": licence, "licence_no": licence,
                                   "name": rng.choice(SURNAMES) + rng.choice(GIVEN),
                                   "carrier_id": carrier["_id"],
                                   "licence_class": rng.choice(["A1", "A1", "B1"]),
                                   "status": "active"})

    # routes: origins are grade 1-2 stations, destinations any station of another city
    def pos(s: dict[str, Any]) -> tuple[float, float]:
        lng, lat = s["location"]["coordinates"]
        return lat, lng

    candidates = [(o, d) for o in stations if o["grade"] <= 2 for d in stations
                  if d["city"] != o["city"] and 40 <= road_km(pos(o), pos(d)) <= 650]
    rng.shuffle(candidates)
    chosen: list[tuple[dict[str, Any], dict[str, Any]]] = []
    seen_city_pairs: set[tuple[str, str]] = set()
    for o, d in candidates:  # first pass: one route per origin station and city pair
        if (o["_id"], d["city"]) not in seen_city_pairs:
            seen_city_pairs.add((o["_id"], d["city"]))
            chosen.append((o, d))
        if len(chosen) == ROUTE_COUNT:
            break
    carriers_by_city: dict[str, list[dict[str, Any]]] = {}
    for c in carriers:
        carriers_by_city.setdefault(c["home_city"], []).append(c)
    province_wide = carriers_by_city.get("", [])
    schedule_seq: dict[str, int] = {}
    for n, (o, d) in enumerate(chosen, start=1):
        route_id = f"R{o['code']}{n:03d}"
        stops = [o]
        # intermediate stations near the straight line, in order of travel
        a, b = pos(o), pos(d)
        total = km_between(a, b)
        near = []
        for s in stations:
            if s["city"] in (o["city"], d["city"]):
                continue
            da, db_ = km_between(a, pos(s)), km_between(pos(s), b)
            if da + db_ < total * 1.12 and 0.15 * total < da < 0.85 * total:
                near.append((da, s))
        near.sort(key=lambda t: t[0])
        picked_cities: set[str] = set()
        for _, s in near:
            if s["city"] not in picked_cities and len(picked_cities) < 2:
                picked_cities.add(s["city"])
                stops.append(s)
        # sometimes a second alighting stop inside the destination city
        others = [s for s in stations if s["city"] == d["city"] and s["_id"] != d["_id"]]
        if others and rng.random() < 0.4:
            stops.append(rng.choice(others))
        stops.append(d)
        distances = [0]
        for prev, cur in itertools.pairwise(stops):
            distances.append(distances[-1] + road_km(pos(prev), pos(cur)))
        distance = distances[-1]
        route_carriers = [rng.choice(carriers_by_city.get(o["city"]) or province_wide)["_id"]]
        if rng.random() < 0.35:
            route_carriers.append(rng.choice(province_wide)["_id"])
        route_carriers = list(dict.fromkeys(route_carriers))
        out["routes"].append({
            "_id": route_id, "code": route_id, "name": f"{o['city']}—{d['city']}",
            "origin_station_id": o["_id"], "destination_station_id": d["_id"],
            "distance_km": distance, "highway_km": round(distance * rng.uniform(0.7, 0.95)),
            "grade": "class_2", "type": "intercity", "carrier_ids": route_carriers,
            "status": "active"})
        for seq, (s, km) in enumerate(zip(stops, distances, strict=True)):
            last = seq == len(stops) - 1
            out["stops"].append({
                "_id": f"{route_id}-{seq}", "route_id": route_id, "seq": seq,
                "station_id": s["_id"], "name": s["name"], "city": s["city"],
                "division": s["division"], "distance_km": km,
                "boarding": not last and s["city"] != d["city"], "alighting": seq > 0})
        for i in range(len(stops) - 1):
            if stops[i]["city"] == d["city"]:
                continue  # no boarding inside the destination city
            for j in range(i + 1, len(stops)):
                km = distances[j] - distances[i]
                adult = adult_fare(km)
                out["fares"].append({
                    "_id": f"{route_id}-{i}-{j}", "route_id": route_id, "from_seq": i,
                    "to_seq": j, "distance_km": km,
                    "guide_price": round(adult * 1.1 / 100) * 100,
                    "prices": {t: _share(adult, bp) for t, bp in TICKET_SHARES.items()},
                    "station_fee": STATION_FEE[stops[i]["grade"]],
                    "effective_from": FARES_EFFECTIVE})
        # schedules: short routes run often, long ones a few times a day
        count = 8 if distance < 120 else 5 if distance < 250 else 3 if distance < 450 else 2
        first, last_minute = 6 * 60 + 30, 19 * 60 + 30
        step = (last_minute - first) / max(1, count - 1)
        for k in range(count):
            minute = int(first + k * step + rng.choice([-20, -10, 0, 10, 20]))
            minute = max(first - 30, min(last_minute + 30, minute)) // 10 * 10
            carrier_id = route_carriers[k % len(route_carriers)]
            fleet = [v for v in out["vehicles"] if v["carrier_id"] == carrier_id]
            vehicle = rng.choice(fleet)
            schedule_seq[o["code"]] = schedule_seq.get(o["code"], 0) + 1
            code = f"S{o['code']}{schedule_seq[o['code']]:03d}"
            sleeper = distance > 450 and minute >= 18 * 60
            out["schedules"].append({
                "_id": code, "code": code, "route_id": route_id, "station_id": o["_id"],
                "carrier_id": carrier_id, "departs_at_local": f"{minute // 60:02d}:"
                                                             f"{minute % 60:02d}",
                "nature": "regular",
                "type": "sleeper" if sleeper else ("direct" if len(stops) == 2 else "normal"),
                "seats": vehicle["seats"], "vehicle_grade": vehicle["grade"],
                "status": "active"})

    for code, name, division, credit in DEMO_OUTLETS:
        out["outlets"].append({"_id": code, "code": code, "name": name, "division": division,
                               "credit_limit": credit, "commission_bp": 300,
                               "status": "active"})
    return out


async def ensure_demo(db: AsyncDatabase[Any], settings: Settings, force: bool = False,
                      channels: list[Any] | None = None) -> None:
    """Load the demo province unless already complete; always plan the days on sale
    and the next one."""
    marker = await db.meta.find_one({"_id": "demo"})
    if force or not marker or not marker.get("complete") \
            or marker.get("version") != DEMO_VERSION:
        await _load(db, settings, channels or [])
        await db.meta.update_one(
            {"_id": "demo"}, {"$set": {"complete": True, "version": DEMO_VERSION,
                                       "loaded_at": dt.datetime.now(dt.UTC)}}, upsert=True)
    sale_days = (await RuleService(db).current()).sale_days
    created = await plan_sale_window(db, sale_days)
    log.info("departures planned", extra={"fields": {"created": created,
                                                     "days": sale_days + 1}})


async def _load(db: AsyncDatabase[Any], settings: Settings, channels: list[Any]) -> None:
    data = generate()
    for name, docs in data.items():
        if name == "stations":  # keep a station system's address and secret if configured
            ops = [UpdateOne({"_id": d["_id"]},
                             {"$set": {k: v for k, v in d.items() if k != "system"},
                              "$setOnInsert": {"system": d["system"], "version": 1}},
                             upsert=True)
                   for d in docs]
            ops += [UpdateOne({"_id": d["_id"]}, {"$set": {"system.vendor":
                                                           d["system"]["vendor"]}})
                    for d in docs]
        else:
            # base data starts at version 1, as a record added through the API does
            stamp = {"version": 1} if name in NETWORK_KINDS else {}
            ops = [ReplaceOne({"_id": d["_id"]}, {**d, **stamp}, upsert=True) for d in docs]
        for i in range(0, len(ops), 1000):
            await db[name].bulk_write(ops[i:i + 1000], ordered=False)
    now = dt.datetime.now(dt.UTC)
    if channels:  # the sales channels of the registry (channels.base), as app.py knows them
        await db.channels.bulk_write([
            UpdateOne({"_id": c.identifier},
                      {"$set": {"code": c.identifier, "name": c.name, "kind": c.kind,
                                "payment_methods": list(c.payment_methods)},
                       "$setOnInsert": {"enabled": True}}, upsert=True)
            for c in channels])
    for role in STAFF_ROLES:
        names = [role] + (["authority_gd"] if role == "authority" else [])
        for username in names:
            scope = {"region": "440000"} if username == "authority_gd" \
                else DEMO_SCOPES.get(role, {})
            # each account gets its own salted hash; reused only within this call
            password_hash = await hash_password(settings.demo_password)
            await db.staff.update_one(
                {"username": username},
                {"$setOnInsert": {"_id": f"stf_demo_{username}", "username": username,
                                  "name": f"演示{role}", "role": role, "status": "active",
                                  "created_at": now, **scope},
                 "$set": {"password_hash": password_hash}},
                upsert=True)
    # departures of proxied stations come from their systems (data sync), not from planning
    await db.departures.delete_many({"station_id": {"$in": list(DEMO_VENDORS)},
                                     "inventory": "native"})
    counts = {k: len(v) for k, v in data.items()}
    log.info("demo province loaded", extra={"fields": counts})
