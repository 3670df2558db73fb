// What each role may open: the menu shows only these, and the router refuses the rest.
export interface Entry { path: string; title: string; roles: string[]; external?: boolean }

export const MENU: Entry[] = [
  { path: "/", title: "概览", roles: ["operator", "finance", "authority", "station_staff"] },
  { path: "/departures", title: "班次管理", roles: ["operator", "station_staff"] },
  { path: "/basedata", title: "基础数据", roles: ["operator", "station_staff", "authority"] },
  { path: "/rules", title: "业务规则", roles: ["operator", "finance", "authority"] },
  { path: "/orders", title: "订单查询", roles: ["operator", "station_staff", "finance"] },
  { path: "/outlets", title: "代售点", roles: ["operator", "finance", "authority"] },
  { path: "/partners", title: "分销平台", roles: ["operator", "finance"] },
  { path: "/account", title: "代售点账户", roles: ["agent"] },
  { path: "/sell", title: "售票", roles: ["agent", "phone_agent"] },
  { path: "/stations", title: "车站系统", roles: ["operator", "authority", "station_staff"] },
  { path: "/alerts", title: "运营告警", roles: ["operator", "finance"] },
  { path: "/refunds", title: "退款处理", roles: ["finance", "operator"] },
  { path: "/settlement", title: "清分结算", roles: ["finance", "operator"] },
  { path: "/monitoring", title: "客流监测", roles: ["authority", "operator", "station_staff", "finance"] },
  { path: "/ministry", title: "部省交换", roles: ["operator", "authority"] },
  { path: "/staff", title: "员工账号", roles: ["operator"] },
  { path: "/audit", title: "审计日志", roles: ["operator"] },
  { path: "/admin/gate", title: "检票", roles: ["gate"], external: true },
];

export function allowed(role: string | undefined): Entry[] {
  return MENU.filter((e) => role && e.roles.includes(role));
}
