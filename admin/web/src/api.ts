// The one client of /api/v1 (the same API the apps use): bearer token, background refresh,
// the API's error codes as exceptions. The session lives in sessionStorage (this tab only).
import { reactive } from "vue";

export interface Staff {
  id: string; username: string; name?: string; role: string; status: string;
  region?: string; station_id?: string; outlet_id?: string;
}
interface Tokens { token: string; refresh_token: string; expires_in: number; staff?: Staff }
interface Session { token: string; refresh: string; expiresAt: number; staff: Staff }

export class ApiError extends Error {
  constructor(public status: number, public code: string, message: string,
              public field?: string) {
    super(message);
  }
}

const KEY = "keyun.admin.session";
export const state = reactive<{ session: Session | null }>({ session: load() });
let refreshing: Promise<boolean> | null = null;
let timer: number | undefined;

function load(): Session | null {
  try {
    return JSON.parse(sessionStorage.getItem(KEY) || "null");
  } catch {
    return null;
  }
}

function save(session: Session | null): void {
  state.session = session;
  if (session) sessionStorage.setItem(KEY, JSON.stringify(session));
  else sessionStorage.removeItem(KEY);
  schedule();
}

function adopt(tokens: Tokens, staff: Staff): void {
  save({ token: tokens.token, refresh: tokens.refresh_token, staff,
         expiresAt: Date.now() + tokens.expires_in * 1000 });
}

function schedule(): void {
  window.clearTimeout(timer);
  const s = state.session;
  if (!s) return;
  // renew a minute before the access token runs out, in the background
  timer = window.setTimeout(() => void refresh(), Math.max(5_000, s.expiresAt - Date.now() - 60_000));
}

async function refresh(): Promise<boolean> {
  const s = state.session;
  if (!s) return false;
  refreshing ??= (async () => {
    try {
      const tokens = await send<Tokens>("POST", "/api/v1/auth/refresh", { refresh_token: s.refresh }, false);
      adopt(tokens, s.staff);
      return true;
    } catch {
      save(null);
      return false;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/** More of a request: its headers (If-Match), or a file as the body instead of JSON. */
export interface Extra { headers?: Record<string, string>; file?: File }

async function send<T>(method: string, path: string, body?: unknown, auth = true,
                       extra: Extra = {}): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json", ...extra.headers };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (extra.file) headers["Content-Type"] = extra.file.type || "application/octet-stream";
  if (auth && state.session) headers.Authorization = `Bearer ${state.session.token}`;
  const payload = extra.file ?? (body === undefined ? undefined : JSON.stringify(body));
  const resp = await fetch(path, { method, headers, body: payload });
  if (resp.status === 204) return undefined as T;
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const e = data.error || {};
    throw new ApiError(resp.status, e.code || "HTTP_" + resp.status, e.message || resp.statusText,
                       e.field);
  }
  return data as T;
}

export async function api<T>(method: string, path: string, body?: unknown,
                             extra: Extra = {}): Promise<T> {
  try {
    return await send<T>(method, path, body, true, extra);
  } catch (e) {
    // an access token that ran out while the tab slept: renew once, then ask again
    if (e instanceof ApiError && e.status === 401 && state.session && await refresh()) {
      return send<T>(method, path, body, true, extra);
    }
    if (e instanceof ApiError && e.status === 401) save(null);
    throw e;
  }
}

/** Save a file the API makes (a statement): fetched with the session, then handed to the
 * browser as a download under the name the server gave it. */
export async function download(path: string): Promise<void> {
  const headers: Record<string, string> = {};
  if (state.session) headers.Authorization = `Bearer ${state.session.token}`;
  const resp = await fetch(path, { headers });
  if (!resp.ok) {
    const e = (await resp.json().catch(() => ({}))).error || {};
    throw new ApiError(resp.status, e.code || "HTTP_" + resp.status, e.message || resp.statusText);
  }
  const disposition = resp.headers.get("Content-Disposition") || "";
  const utf8 = /filename\*=UTF-8''([^;]+)/i.exec(disposition);  // RFC 6266: any script
  const named = /filename="([^"]+)"/.exec(disposition);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await resp.blob());
  link.download = utf8 ? decodeURIComponent(utf8[1]) : named ? named[1] : path.split("/").pop() || "download";
  document.body.appendChild(link);
  link.click();
  link.remove();
  window.setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

export async function signIn(username: string, password: string): Promise<Staff> {
  const tokens = await send<Tokens>("POST", "/api/v1/auth/staff", { username, password }, false);
  adopt(tokens, tokens.staff as Staff);
  return tokens.staff as Staff;
}

export async function signOut(): Promise<void> {
  const s = state.session;
  save(null);
  if (s) await send("POST", "/api/v1/auth/logout", { refresh_token: s.refresh }, false).catch(() => undefined);
}

export function query(params: Record<string, string | number | undefined | null>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  const text = q.toString();
  return text ? "?" + text : "";
}

/** A Chinese message for the codes a person meets most; the API's own message otherwise. */
const MESSAGES: Record<string, string> = {
  INVALID_CREDENTIALS: "用户名或密码错误", ACCOUNT_DISABLED: "账号已停用",
  TOO_MANY_ATTEMPTS: "尝试次数过多，请稍后再试", FORBIDDEN: "当前角色无权执行此操作",
  AUTH_REQUIRED: "请先登录", TOKEN_REVOKED: "登录已失效，请重新登录",
  REFUND_NOT_RETRYABLE: "该退款当前不能重新发起", CANNOT_CHANGE_OWN_ACCOUNT: "不能修改自己的账号",
  VERSION_MISMATCH: "该记录已被他人修改，请刷新后重新修改", RECORD_EXISTS: "该代码已存在",
  FARE_ABOVE_GUIDE: "票价不得高于政府指导价", ROUTE_WITHDRAWN: "该线路已撤销，不能新增班次或票价",
  CARRIER_NOT_ON_ROUTE: "该企业未经营此线路", SETTLEMENT_DAY_OPEN: "只能结算已结束的日期",
  SETTLEMENT_OUT_OF_ORDER: "更晚的日期已结算，结算日期只能向后", RECONCILIATION_OPEN: "该日期还有未处理的对账差异",
  CLEARING_RULE_INVALID: "清分规则不能保证每一分钱都有归属", DIFFERENCE_RESOLVED: "该差异已处理",
  NOTHING_TO_ADJUST: "金额一致，无需调账，请选择确认", STATEMENT_NOT_READY: "账单次日才能获取",
  STATION_UNSUPPORTED: "该车站系统不提供此功能", FORECAST_NO_HISTORY: "历史数据不足，暂不能预测",
  MINISTRY_DAY_OPEN: "只能报送已结束的日期", MINISTRY_EXPORT_RUNNING: "该日数据正在报送，请稍后再看",
  OUT_OF_SCOPE: "超出本单位管辖范围", STATS_RANGE_INVALID: "统计区间不正确（最长三年）", RULE_EFFECTIVE_IN_PAST: "生效时间不能早于现在", IMPORT_UNREADABLE: "文件无法读取（请用 CSV 或 XLSX）",
  EXPORT_FAILED: "导出失败，请重新导出", EXPORT_ABANDONED: "导出中断（服务器已重启），请重新导出",
  EXPORT_NOT_FOUND: "导出记录不存在或已过期（保留一天）", EXPORTS_BUSY: "已有导出正在进行，请稍候", EXPORT_TOO_LARGE: "行数过多，请使用导出任务",
};

export function explain(e: unknown): string {
  if (e instanceof ApiError) return MESSAGES[e.code] ?? `${e.message}（${e.code}）`;
  return "网络异常，请稍后重试";
}

schedule();
