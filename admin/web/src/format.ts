// How Chinese users read money and time: ¥12.50, 2026-11-28 14:30 (24-hour, Beijing time
// whatever the device's zone). Fen are never shown raw.

export function yuan(fen: number | null | undefined): string {
  if (fen === null || fen === undefined) return "—";
  const sign = fen < 0 ? "-" : "";
  const abs = Math.abs(Math.trunc(fen));
  const whole = Math.floor(abs / 100).toLocaleString("zh-CN");
  return `${sign}¥${whole}.${String(abs % 100).padStart(2, "0")}`;
}

const parts = new Intl.DateTimeFormat("zh-CN", {
  timeZone: "Asia/Shanghai", hourCycle: "h23", year: "numeric", month: "2-digit",
  day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
});

export function beijing(iso: string | null | undefined, seconds = false): string {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  const p: Record<string, string> = {};
  for (const { type, value } of parts.formatToParts(date)) p[type] = value;
  const time = `${p.hour}:${p.minute}${seconds ? ":" + p.second : ""}`;
  return `${p.year}-${p.month}-${p.day} ${time}`;
}

export const ROLE_NAMES: Record<string, string> = {
  operator: "运营管理", finance: "财务", authority: "行业主管部门", station_staff: "车站工作人员",
  gate: "检票员", kiosk: "自助售票机", agent: "代售点", phone_agent: "电话订票坐席",
  passenger: "旅客",
};
