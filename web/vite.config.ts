import { svelte } from "@sveltejs/vite-plugin-svelte";
import { resolve } from "node:path";
import { defineConfig } from "vitest/config";

// The bundle is committed (services/studbook_server/ui/static/) and checked against a fresh build
// (tests/ui/test_bundle.py): no source maps, no build timestamps, content-hashed file names.
export default defineConfig({
  plugins: [svelte()],
  base: "/",
  // `npm run dev`: the pages from Vite, the API from a Studbook on :8080 (`scripts/run`).
  server: {
    proxy: {
      "/graphql": { target: "http://127.0.0.1:8080", ws: true },
      "/ui/signin": "http://127.0.0.1:8080",
    },
  },
  build: {
    outDir: process.env.STUDBOOK_UI_OUT ?? "../services/studbook_server/ui/static",
    emptyOutDir: true,
    sourcemap: false,
    target: "es2022",
    chunkSizeWarningLimit: 2000,
    rollupOptions: {
      // GraphiQL's dependencies mark modules "use client" (for React servers); nothing to do here.
      onwarn(warning, warn) {
        if (warning.code !== "MODULE_LEVEL_DIRECTIVE") warn(warning);
      },
      input: {
        main: resolve(import.meta.dirname, "index.html"),
        graphiql: resolve(import.meta.dirname, "graphiql.html"),
      },
    },
  },
  test: {
    include: ["src/**/*.test.ts"],
    environment: "node",
  },
});
