import { defineConfig } from "vite";
import vue from "@vitejs/plugin-vue";

// Served by Keyun under /admin/ (admin/pages.py); everything bundled, nothing from a CDN.
export default defineConfig({
  base: "/admin/",
  plugins: [vue()],
  build: { outDir: "dist", emptyOutDir: true, chunkSizeWarningLimit: 2000 },
});
