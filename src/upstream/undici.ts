// The undici package (7.x), loaded after Node's built-in fetch has installed its own dispatcher.
//
// Loading the package installs its Agent as the process-wide dispatcher of Node's built-in
// fetch when none is set yet, and Node 20's fetch (undici 6 inside) then fails requests that
// carry an explicit Content-Length ("invalid content-length header"). Creating a Headers object
// loads Node's built-in undici first, which installs its own Agent; the package then leaves it
// alone. A static `import 'undici'` would be hoisted above that line (also in the esbuild
// bundle), hence require, in this order.
import { createRequire } from 'node:module';
import type * as Undici from 'undici';

void new Headers();
const undici = createRequire(import.meta.url)('undici') as typeof Undici;

export const { Agent, ProxyAgent, buildConnector, request } = undici;
