// ECharts, the parts we use, bundled (no CDN).
import * as echarts from "echarts/core";
import { BarChart } from "echarts/charts";
import { GridComponent, LegendComponent, TooltipComponent } from "echarts/components";
import { CanvasRenderer } from "echarts/renderers";

echarts.use([BarChart, GridComponent, LegendComponent, TooltipComponent, CanvasRenderer]);

export function latencyChart(el: HTMLElement, stations: { name: string; p50_ms: number | null;
                                                          p99_ms: number | null }[]) {
  const chart = echarts.getInstanceByDom(el) ?? echarts.init(el);
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
