#!/usr/bin/env node
// Entry point of the `ocirelay` command. The sources are TypeScript run through tsx,
// so `npm ci` is the whole build: no compile step, no dist/ to keep in sync.
import { register } from 'tsx/esm/api';
register();
const { runCli } = await import('../src/cli.ts');
process.exitCode = await runCli(process.argv.slice(2));
