// The kinds of base data (table 4-1 of the guideline) as the pages show and edit them; the
// API (/api/v1/admin/{kind}) checks every value again. Money is edited in yuan, sent in fen.

export type FieldType = "text" | "int" | "number" | "yuan" | "enum" | "day" | "time" | "list";

export interface Field {
  name: string; // a path: "prices.adult" is prices → adult
  label: string;
  type?: FieldType;
  options?: Record<string, string>;
  key?: boolean; // part of the record's code: set once, never changed
  required?: boolean;
  column?: boolean; // shown in the list
  readonly?: boolean; // shown, never sent (masked personal data, derived values)
}

export interface Kind {
  name: string;
  label: string;
  fields: Field[];
  stationWrites?: boolean; // station staff may add and change these (their own)
}

const STATUS = { active: "正常", suspended: "暂停", withdrawn: "已撤销" };
const RATING = { AAA: "AAA", AA: "AA", A: "A", B: "B" };
const GRADES = { high_3: "高三级", high_2: "高二级", high_1: "高一级", mid: "中级", normal: "普通级" };

export const KINDS: Kind[] = [
  { name: "stations", label: "客运站", fields: [
    { name: "code", label: "客运站代码", key: true, required: true, column: true },
    { name: "name", label: "名称", required: true, column: true },
    { name: "grade", label: "级别", type: "int", required: true, column: true },
    { name: "division", label: "行政区划", required: true, column: true },
    { name: "city", label: "城市", required: true, column: true },
    { name: "address", label: "地址" },
    { name: "complaint_phone", label: "投诉电话", column: true },
    { name: "lng", label: "经度", type: "number", required: true },
    { name: "lat", label: "纬度", type: "number", required: true },
    { name: "vendor", label: "售票系统", readonly: true, column: true },
    { name: "status", label: "状态", type: "enum", options: STATUS, column: true },
  ] },
  { name: "carriers", label: "客运企业", fields: [
    { name: "code", label: "企业代码", key: true, required: true, column: true },
    { name: "name", label: "名称", required: true, column: true },
    { name: "division", label: "行政区划", required: true, column: true },
    { name: "address", label: "地址" },
    { name: "phone", label: "电话", column: true },
    { name: "licence_word", label: "经营许可证字" },
    { name: "licence_no", label: "经营许可证号", required: true, column: true },
    { name: "quality_rating", label: "质量信誉考核", type: "enum", options: RATING, column: true },
    { name: "safety_rating", label: "安全评价" },
    { name: "status", label: "状态", type: "enum", options: STATUS, column: true },
  ] },
  { name: "vehicles", label: "车辆", fields: [
    { name: "plate", label: "车牌号码", key: true, required: true, column: true },
    { name: "carrier_id", label: "客运企业代码", required: true, column: true },
    { name: "model", label: "厂牌型号", required: true, column: true },
    { name: "vehicle_type", label: "车辆类型" },
    { name: "grade", label: "车辆等级", type: "enum", options: GRADES, required: true, column: true },
    { name: "manufactured_on", label: "出厂日期", type: "day" },
    { name: "seats", label: "核定载客数", type: "int", required: true, column: true },
    { name: "positioning_device", label: "卫星定位装置" },
    { name: "status", label: "状态", type: "enum", options: STATUS, column: true },
  ] },
  { name: "drivers", label: "驾驶员", fields: [
    { name: "licence_no", label: "从业资格证号", key: true, required: true, column: true },
    { name: "name", label: "姓名", required: true, column: true },
    { name: "gender", label: "性别", type: "enum", options: { M: "男", F: "女" }, column: true },
    { name: "id_no", label: "身份证号", column: true },
    { name: "phone", label: "电话", column: true },
    { name: "carrier_id", label: "客运企业代码", required: true, column: true },
    { name: "licence_class", label: "准驾车型", type: "enum", required: true,
      options: { A1: "A1", A2: "A2", A3: "A3", B1: "B1", B2: "B2", C1: "C1" } },
    { name: "credit_rating", label: "诚信考核", type: "enum", options: RATING, column: true },
    { name: "status", label: "状态", type: "enum", options: STATUS, column: true },
  ] },
  { name: "routes", label: "班线", fields: [
    { name: "code", label: "线路代码", key: true, required: true, column: true },
    { name: "name", label: "线路名称", required: true, column: true },
    { name: "grade", label: "线路等级", type: "enum", required: true,
      options: { class_1: "一类", class_2: "二类", class_3: "三类", class_4: "四类" } },
    { name: "type", label: "线路类型", type: "enum",
      options: { intercity: "市际", county: "县际", interprovincial: "省际", rural: "农村" },
      required: true },
    { name: "origin_station_id", label: "起点站", required: true, column: true },
    { name: "destination_station_id", label: "到达站", required: true, column: true },
    { name: "highway_km", label: "高速里程", type: "int" },
    { name: "distance_km", label: "总里程", type: "int", readonly: true, column: true },
    { name: "carrier_ids", label: "经营企业", type: "list", required: true, column: true },
    { name: "status", label: "状态", type: "enum", options: STATUS, column: true },
  ] },
  { name: "schedules", label: "班次", stationWrites: true, fields: [
    { name: "code", label: "班次代码", key: true, required: true, column: true },
    { name: "route_id", label: "线路代码", required: true, column: true },
    { name: "station_id", label: "发车站", column: true },
    { name: "carrier_id", label: "客运企业代码", required: true, column: true },
    { name: "departs_at_local", label: "发车时间", type: "time", required: true, column: true },
    { name: "nature", label: "班次性质", type: "enum", options: { regular: "正班", seasonal: "季节班" } },
    { name: "type", label: "班次类型", type: "enum",
      options: { normal: "普通", direct: "直达", express: "快班", sleeper: "卧铺" }, column: true },
    { name: "seats", label: "座位数", type: "int", required: true, column: true },
    { name: "vehicle_grade", label: "车辆等级", type: "enum", options: GRADES },
    { name: "status", label: "状态", type: "enum", options: STATUS, column: true },
  ] },
  { name: "fares", label: "票价", stationWrites: true, fields: [
    { name: "route_id", label: "线路代码", key: true, required: true, column: true },
    { name: "from_seq", label: "上车站序号", type: "int", key: true, required: true, column: true },
    { name: "to_seq", label: "下车站序号", type: "int", key: true, required: true, column: true },
    { name: "distance_km", label: "里程", type: "int", readonly: true, column: true },
    { name: "guide_price", label: "政府指导价", type: "yuan", required: true, column: true },
    { name: "prices.adult", label: "执行票价", type: "yuan", required: true, column: true },
    { name: "prices.child", label: "儿童票价", type: "yuan", column: true },
    { name: "prices.student", label: "学生票价", type: "yuan" },
    { name: "prices.senior", label: "老年票价", type: "yuan" },
    { name: "prices.military", label: "军人票价", type: "yuan" },
    { name: "prices.disabled", label: "残疾人票价", type: "yuan" },
    { name: "station_fee", label: "站务费", type: "yuan", column: true },
  ] },
];

export function read(record: Record<string, any>, path: string): any {
  return path.split(".").reduce((v, k) => (v == null ? undefined : v[k]), record);
}

export function write(record: Record<string, any>, path: string, value: any): void {
  const keys = path.split(".");
  let at = record;
  for (const k of keys.slice(0, -1)) at = at[k] ??= {};
  at[keys[keys.length - 1]] = value;
}

/** A record's value as the form edits it (yuan for money, text for lists). */
export function toForm(field: Field, value: any): any {
  if (value === undefined || value === null) return field.type === "int" || field.type === "yuan"
    || field.type === "number" ? undefined : "";
  if (field.type === "yuan") return value / 100;
  if (field.type === "list") return (value as string[]).join(",");
  return value;
}

/** The form's value as the API takes it; undefined: not given. */
export function fromForm(field: Field, value: any): any {
  if (value === "" || value === undefined || value === null) return undefined;
  if (field.type === "yuan") return Math.round(Number(value) * 100);
  if (field.type === "int") return Math.trunc(Number(value));
  if (field.type === "number") return Number(value);
  if (field.type === "list") return String(value).split(/[,，\s]+/).filter(Boolean);
  return typeof value === "string" ? value.trim() : value;
}
