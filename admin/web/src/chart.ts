// ECharts, the parts we use, bundled (no CDN).
import * as echarts from "echarts/core";
import { BarChart, LineChart, LinesChart, ScatterChart } from "echarts/charts";
import { GridComponent, LegendComponent, TooltipComponent } from "echarts/components";
import { CanvasRenderer } from "echarts/renderers";

echarts.use([BarChart, LineChart, LinesChart, ScatterChart, GridComponent, LegendComponent,
             TooltipComponent, CanvasRenderer]);

function chartOn(el: HTMLElement) {
  return echarts.getInstanceByDom(el) ?? echarts.init(el);
}

export interface FlowRow { key: string; name: string; passengers: number; seats?: number;
                           load_factor?: number | null; on_time_rate?: number | null }

/** Passengers (bars) and load factor (a line, right axis) per row of a statistics answer. */
export function flowChart(el: HTMLElement, rows: FlowRow[]) {
  const chart = chartOn(el);
  chart.setOption({
    tooltip: { trigger: "axis" },
    legend: { data: ["旅客人数", "上座率"], top: 0, right: 16 },
    grid: { left: 64, right: 56, bottom: 72, top: 48 },
    xAxis: { type: "category", data: rows.map((r) => r.name || r.key),
             axisLabel: { rotate: rows.length > 12 ? 30 : 0 } },
    yAxis: [{ type: "value", name: "人" },
            { type: "value", name: "上座率", min: 0, max: 1, axisLabel: { formatter: pct } }],
    series: [
      { name: "旅客人数", type: "bar", data: rows.map((r) => r.passengers) },
      { name: "上座率", type: "line", yAxisIndex: 1, data: rows.map((r) => r.load_factor ?? null) },
    ],
  }, true);
  return chart;
}

export interface ForecastDay { date: string; passengers: number; low: number; high: number;
                               pre_sold: number; seats: number; holiday: string | null }

/** A forecast: the interval as a band, the forecast line, what is sold, and the seats. */
export function forecastChart(el: HTMLElement, days: ForecastDay[]) {
  const chart = chartOn(el);
  const labels = days.map((d) => d.date.slice(5) + (d.holiday ? ` ${d.holiday}` : ""));
  chart.setOption({
    tooltip: { trigger: "axis" },
    legend: { data: ["预测客流", "已售", "运力座位"], top: 0, right: 16 },
    grid: { left: 64, right: 24, bottom: 72, top: 48 },
    xAxis: { type: "category", data: labels, axisLabel: { rotate: 30 } },
    yAxis: { type: "value", name: "人" },
    series: [
      { name: "区间下限", type: "line", stack: "band", symbol: "none", lineStyle: { opacity: 0 },
        data: days.map((d) => d.low) },
      { name: "区间上限", type: "line", stack: "band", symbol: "none", lineStyle: { opacity: 0 },
        areaStyle: { opacity: 0.2 }, data: days.map((d) => d.high - d.low) },
      { name: "预测客流", type: "line", data: days.map((d) => d.passengers) },
      { name: "已售", type: "bar", data: days.map((d) => d.pre_sold) },
      { name: "运力座位", type: "line", step: "middle", symbol: "none",
        lineStyle: { type: "dashed" }, data: days.map((d) => d.seats) },
    ],
  }, true);
  return chart;
}

interface Feature { id: string; geometry: { type: string; coordinates: any };
                    properties: Record<string, any> }

/** Load bands of the map (客座率: passengers over seats offered), lightest to busiest. */
export const LOAD_BANDS = [
  { below: 0.5, color: "#18a058", label: "低于 50%" },
  { below: 0.8, color: "#2080f0", label: "50%–80%" },
  { below: 1.0, color: "#f0a020", label: "80%–100%" },
  { below: Infinity, color: "#d03050", label: "满载及以上" },
];
const NO_SERVICE = "#a0a0a0";

export function loadColor(loadFactor: number | null | undefined): string {
  if (loadFactor === null || loadFactor === undefined) return NO_SERVICE;
  return LOAD_BANDS.find((b) => loadFactor < b.below)!.color;
}

function loadText(f: Feature): string {
  const lf = f.properties.load_factor;
  return lf === null || lf === undefined ? "当日无班次" : `客座率 ${pct(lf)}`;
}

/** Stations (points sized by the day's passengers) and routes (lines) on longitude / latitude
 * axes, a map without map tiles, each coloured by its load factor on the day; a peak warning
 * rings a station and thickens a route. */
export function mapChart(el: HTMLElement, stations: Feature[], routes: Feature[]) {
  const chart = chartOn(el);
  const most = Math.max(1, ...stations.map((f) => f.properties.passengers ?? 0));
  const points: number[][] = [...stations.map((f) => f.geometry.coordinates),
                              ...routes.flatMap((f) => f.geometry.coordinates)];
  const lngs = points.map((p) => p[0]);
  const lats = points.map((p) => p[1]);
  const bound = (v: number[], lo: boolean) =>
    lo ? Math.floor((Math.min(...v) - 0.1) * 10) / 10 : Math.ceil((Math.max(...v) + 0.1) * 10) / 10;
  const warned = (f: Feature) => (f.properties.warnings
    ? `<br/>预警 ${f.properties.warnings} 天，最早 ${f.properties.next_warning}` : "");
  chart.setOption({
    animation: false,
    tooltip: { formatter: (p: any) => p.data?.tip ?? "" },
    grid: { left: 56, right: 24, bottom: 40, top: 24 },
    xAxis: { type: "value", name: "经度", min: points.length ? bound(lngs, true) : undefined,
             max: points.length ? bound(lngs, false) : undefined },
    yAxis: { type: "value", name: "纬度", min: points.length ? bound(lats, true) : undefined,
             max: points.length ? bound(lats, false) : undefined },
    series: [
      { type: "lines", coordinateSystem: "cartesian2d", lineStyle: { opacity: 0.6, width: 2 },
        data: routes.map((f) => ({ coords: f.geometry.coordinates,
                                   tip: `${f.properties.name}<br/>当日 ${f.properties.passengers} 人 / ` +
                                        `${f.properties.seats} 座，${loadText(f)}${warned(f)}`,
                                   lineStyle: { color: loadColor(f.properties.load_factor),
                                                width: f.properties.warning_level ? 4 : 2 } })) },
      { type: "scatter", label: { show: true, position: "right", formatter: "{b}", fontSize: 11 },
        data: stations.map((f) => ({
          value: f.geometry.coordinates, name: f.properties.name,
          symbolSize: 8 + 24 * Math.sqrt((f.properties.passengers ?? 0) / most),
          itemStyle: { color: loadColor(f.properties.load_factor),
                       borderColor: f.properties.warning_level ? "#d03050" : "#fff",
                       borderWidth: f.properties.warning_level ? 3 : 1 },
          tip: `${f.properties.name}<br/>当日 ${f.properties.passengers} 人 / ${f.properties.seats} 座，` +
               `${loadText(f)}${warned(f)}`,
        })) },
    ],
  }, true);
  return chart;
}

function pct(v: number): string {
  return `${Math.round(v * 100)}%`;
}

export function latencyChart(el: HTMLElement, stations: { name: string; p50_ms: number | null;
                                                          p99_ms: number | null }[]) {
  const chart = chartOn(el);
  chart.setOption({
    tooltip: { trigger: "axis", valueFormatter: (v: unknown) => `${v} 毫秒` },
    legend: { data: ["中位数", "99%"], top: 0, right: 16 },
    grid: { left: 56, right: 16, bottom: 72, top: 48 },
    xAxis: { type: "category", data: stations.map((s) => s.name),
             axisLabel: { interval: 0, rotate: 20 } },
    yAxis: { type: "value", name: "毫秒" },
    series: [
      { name: "中位数", type: "bar", data: stations.map((s) => s.p50_ms ?? 0) },
      { name: "99%", type: "bar", data: stations.map((s) => s.p99_ms ?? 0) },
    ],
  });
  return chart;
}
