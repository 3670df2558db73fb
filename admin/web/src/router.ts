import { createRouter, createWebHistory } from "vue-router";
import { state } from "./api";
import { MENU } from "./menu";
import Layout from "./views/Layout.vue";
import Login from "./views/Login.vue";

export const router = createRouter({
  history: createWebHistory("/admin/"),
  routes: [
    { path: "/login", component: Login, meta: { public: true } },
    {
      path: "/", component: Layout,
      children: [
        { path: "", component: () => import("./views/Home.vue") },
        { path: "departures", component: () => import("./views/Departures.vue") },
        { path: "basedata", component: () => import("./views/BaseData.vue") },
        { path: "rules", component: () => import("./views/Rules.vue") },
        { path: "orders", component: () => import("./views/Orders.vue") },
        { path: "outlets", component: () => import("./views/Outlets.vue") },
        { path: "partners", component: () => import("./views/Partners.vue") },
        { path: "account", component: () => import("./views/Account.vue") },
        { path: "sell", component: () => import("./views/Sell.vue") },
        { path: "stations", component: () => import("./views/Stations.vue") },
        { path: "alerts", component: () => import("./views/Alerts.vue") },
        { path: "refunds", component: () => import("./views/Refunds.vue") },
        { path: "settlement", component: () => import("./views/Settlement.vue") },
        { path: "monitoring", component: () => import("./views/Monitoring.vue") },
        { path: "ministry", component: () => import("./views/Ministry.vue") },
        { path: "staff", component: () => import("./views/Staff.vue") },
        { path: "audit", component: () => import("./views/Audit.vue") },
        { path: ":rest(.*)*", component: () => import("./views/NotFound.vue") },
      ],
    },
  ],
});

router.beforeEach((to) => {
  const session = state.session;
  if (to.meta.public) return session ? "/" : true;
  if (!session) return { path: "/login", query: to.fullPath !== "/" ? { next: to.fullPath } : {} };
  const entry = MENU.find((e) => !e.external && e.path === to.path);
  if (entry && !entry.roles.includes(session.staff.role)) {
    // a role with no overview lands on its first page (the gate on the gate page)
    const first = MENU.find((e) => e.roles.includes(session.staff.role));
    if (first?.external) {
      window.location.assign(first.path);
      return false;
    }
    return first && first.path !== to.path ? first.path : { path: "/denied" };
  }
  return true;
});
