import { defineConfig } from "vite";
import vue from "@vitejs/plugin-vue";

// Served by Keyun under /admin/ (admin/pages.py); everything bundled, nothing from a CDN.
export default defineConfig({
  base: "/admin/",
  plugins: [vue()],
  build: {
    outDir: "dist", emptyOutDir: true, chunkSizeWarningLimit: 2000,
    // the back office, and /api/docs (Swagger UI from its npm package)
    rollupOptions: { input: { main: "index.html", apidocs: "api-docs.html" } },
  },
});
