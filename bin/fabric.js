#!/usr/bin/env node
// The `fabric` command: runs the compiled CLI (built by `npm ci` through the prepare script).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const compiled = fileURLToPath(new URL('../dist/app/cli/main.js', import.meta.url));
if (!existsSync(compiled)) {
  console.error('fabric: the project is not built (dist/ missing); run `npm ci` or `npm run build` first');
  process.exit(1);
}
await import(compiled);
