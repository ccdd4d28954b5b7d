// Parser for the WWW-Authenticate response header (RFC 9110 section 11.6.1).
//
// A header holds one or more challenges separated by commas, and each challenge's
// parameters are separated by commas too, so a comma alone does not tell where a
// challenge ends: `Basic realm="a", Bearer realm="b",service="c"`. A new challenge starts
// where a comma is followed by a token that is not followed by `=`. Quoted values may hold
// commas and backslash escapes: `scope="repository:a/b:pull,push"`.

export interface AuthChallenge {
  /** Lower-cased auth scheme, e.g. 'bearer', 'basic'. */
  scheme: string;
  /** Parameters by lower-cased name; values unquoted and unescaped. */
  params: Record<string, string>;
  /** The token68 form (`Negotiate abc==`), when the challenge has no parameters. */
  token68?: string;
}

const TCHAR = /[!#$%&'*+\-.^_`|~0-9A-Za-z]/;
const TOKEN68_CHAR = /[A-Za-z0-9\-._~+/=]/;

export function parseWwwAuthenticate(header: string | undefined): AuthChallenge[] {
  const s = header ?? '';
  const n = s.length;
  const out: AuthChallenge[] = [];
  let i = 0;

  const skipWs = (p: number): number => {
    while (p < n && (s[p] === ' ' || s[p] === '\t')) p++;
    return p;
  };
  const tokenEnd = (p: number): number => {
    while (p < n && TCHAR.test(s[p]!)) p++;
    return p;
  };
  // Does a `name = value` parameter start at p (after optional whitespace)? A trailing
  // `=` with nothing usable after it is token68 padding, not a parameter.
  const isParamStart = (p: number): boolean => {
    p = skipWs(p);
    const end = tokenEnd(p);
    if (end === p) return false;
    p = skipWs(end);
    if (s[p] !== '=') return false;
    p = skipWs(p + 1);
    return p < n && s[p] !== ',' && s[p] !== '=';
  };
  const readQuoted = (): string => {
    // s[i] === '"'; an unterminated string takes the rest of the header.
    i++;
    let v = '';
    while (i < n) {
      const c = s[i++]!;
      if (c === '"') return v;
      if (c === '\\' && i < n) v += s[i++]!;
      else v += c;
    }
    return v;
  };
  const readBare = (): string => {
    // Lenient: a bare value runs to the next comma or whitespace, so an unquoted
    // `realm=https://auth.example/token` still parses.
    const start = i;
    while (i < n && s[i] !== ',' && s[i] !== ' ' && s[i] !== '\t') i++;
    return s.slice(start, i);
  };

  while (i < n) {
    while (i < n && (s[i] === ',' || s[i] === ' ' || s[i] === '\t')) i++;
    if (i >= n) break;
    const schemeEnd = tokenEnd(i);
    if (schemeEnd === i) {
      i++; // not a token: skip the character and resynchronise
      continue;
    }
    const challenge: AuthChallenge = { scheme: s.slice(i, schemeEnd).toLowerCase(), params: {} };
    out.push(challenge);
    i = skipWs(schemeEnd);

    if (i < n && s[i] !== ',' && !isParamStart(i)) {
      const start = i;
      while (i < n && TOKEN68_CHAR.test(s[i]!)) i++;
      if (i > start) challenge.token68 = s.slice(start, i);
      continue;
    }

    while (isParamStart(i)) {
      i = skipWs(i);
      const nameEnd = tokenEnd(i);
      const name = s.slice(i, nameEnd).toLowerCase();
      i = skipWs(nameEnd) + 1; // past '='
      i = skipWs(i);
      const value = s[i] === '"' ? readQuoted() : readBare();
      challenge.params[name] = value;
      i = skipWs(i);
      if (s[i] !== ',') break;
      let next = i;
      while (next < n && (s[next] === ',' || s[next] === ' ' || s[next] === '\t')) next++;
      if (!isParamStart(next)) break; // the next challenge, handled by the outer loop
      i = next;
    }
  }
  return out;
}
