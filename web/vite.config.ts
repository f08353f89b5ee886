import { defineConfig } from "vite";

// Relative asset paths: the client works wherever the gateway serves it.
export default defineConfig({
  base: "./",
  build: { outDir: "dist", emptyOutDir: true, chunkSizeWarningLimit: 600 },
  // `npm run dev`: the API and /ws of a local chatmesh on :9000.
  server: { proxy: { "/service": "http://127.0.0.1:9000", "/ws": { target: "ws://127.0.0.1:9000", ws: true } } },
});
