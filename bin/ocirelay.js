#!/usr/bin/env node
// Entry point of the `ocirelay` command. Runs the build in dist/ (made by `npm ci` through the
// prepare script) when it is newer than every source file; otherwise the TypeScript sources
// through tsx, so an edited checkout never runs stale code. OCIRELAY_FROM_SOURCE=1 forces tsx.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const src = fileURLToPath(new URL('../src', import.meta.url));
const dist = fileURLToPath(new URL('../dist/cli.js', import.meta.url));

function newest(dir) {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = `${dir}/${e.name}`;
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return t;
}

let cli;
if (process.env.OCIRELAY_FROM_SOURCE !== '1' && existsSync(dist) && statSync(dist).mtimeMs >= newest(src)) {
  cli = await import(dist);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  cli = await import('../src/cli.ts');
}
process.exitCode = await cli.runCli(process.argv.slice(2));
