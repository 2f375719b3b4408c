// A real OIDC issuer for the gateway's tests, on loopback, over HTTPS with the test's own CA.
//
//   node issuer.mjs            env: TLS_CERT, TLS_KEY (PEM files), KEYS_FILE, PORT (0: any), MODE
//
// KEYS_FILE lists signing keys, one "kid /path/to/private.pem" per line; the first signs, all are
// published in the JWKS. SIGHUP re-reads it (key rotation without a restart of anything).
// On start it prints "ready https://127.0.0.1:PORT" on stdout.
//
// Clients (client_credentials give RS256 JWT access tokens, audience = the `resource` asked for,
// default https://gateway.test, with CI-style claims per client):
//   ci-app / ci-secret     repository acme/app on main, environment prod, started by `actor` carol
//   ci-fork / ci-secret    repository mallory/fork on a feature branch
//   web-approvals / web-secret   authorization_code + PKCE: an ID token (devInteractions login);
//                                redirect URIs: http://127.0.0.1:54001/cb and $WEB_REDIRECTS;
//                                any login name is an account (email NAME@example.test, verified,
//                                except for `unverified-NAME`)
//
// MODE=junk-discovery: every request gets 200 with a body that is not JSON.
// MODE=junk-jwks: a valid discovery document whose jwks_uri answers with junk.
import Provider from 'oidc-provider';
import { createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import https from 'node:https';

const tls = { cert: readFileSync(process.env.TLS_CERT), key: readFileSync(process.env.TLS_KEY) };
const server = https.createServer(tls);
let handler = (req, res) => { res.writeHead(503); res.end(); };
server.on('request', (req, res) => handler(req, res));

const CLIENT_CLAIMS = {
  'ci-app': {
    repository: 'acme/app', repository_owner: 'acme', ref: 'refs/heads/main', ref_type: 'branch',
    environment: 'prod', job_workflow_ref: 'acme/app/.github/workflows/agent.yml@refs/heads/main',
    runner_environment: 'self-hosted', groups: ['deployers', 'developers'], actor: 'carol',
  },
  'ci-fork': {
    repository: 'mallory/fork', repository_owner: 'mallory', ref: 'refs/heads/pwn', ref_type: 'branch',
    job_workflow_ref: 'mallory/fork/.github/workflows/agent.yml@refs/heads/pwn',
    runner_environment: 'self-hosted', groups: ['outsiders'],
  },
};

function signingKeys() {
  return readFileSync(process.env.KEYS_FILE, 'utf8').split('\n').map((l) => l.trim()).filter(Boolean)
    .map((line) => {
      const [kid, path] = line.split(/\s+/);
      const jwk = createPrivateKey(readFileSync(path)).export({ format: 'jwk' });
      return { ...jwk, kid, use: 'sig', alg: 'RS256' };
    });
}

function provider(issuer) {
  const p = new Provider(issuer, {
    clients: [
      ...Object.keys(CLIENT_CLAIMS).map((id) => ({
        client_id: id, client_secret: 'ci-secret', grant_types: ['client_credentials'],
        response_types: [], redirect_uris: [], token_endpoint_auth_method: 'client_secret_basic',
      })),
      {
        client_id: 'web-approvals', client_secret: 'web-secret', application_type: 'native',
        grant_types: ['authorization_code'], response_types: ['code'],
        // WEB_REDIRECTS: more redirect URIs (comma-separated), e.g. an approvals page under test.
        redirect_uris: ['http://127.0.0.1:54001/cb', ...(process.env.WEB_REDIRECTS || '').split(',').filter(Boolean)],
      },
    ],
    jwks: { keys: signingKeys() },
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'https://gateway.test',
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource) => ({
          scope: 'pg:connect',
          audience: resource,
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    // Every account's email is verified, except that `unverified-NAME` claims NAME's address unverified.
    findAccount: (ctx, id) => ({
      accountId: id,
      claims: () => (id.startsWith('unverified-')
        ? { sub: id, email: `${id.slice('unverified-'.length)}@example.test`, email_verified: false }
        : { sub: id, email: `${id}@example.test`, email_verified: true }),
    }),
    claims: { openid: ['sub'], email: ['email', 'email_verified'] },
    extraTokenClaims: (ctx, token) => CLIENT_CLAIMS[token.clientId] || {},
  });
  p.proxy = false;
  return p;
}

function junk(res) {
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end('<html>this is not json');
}

server.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  const issuer = `https://127.0.0.1:${server.address().port}`;
  const mode = process.env.MODE || '';
  if (mode === 'junk-discovery') {
    handler = (req, res) => junk(res);
  } else if (mode === 'junk-jwks') {
    handler = (req, res) => {
      if (req.url.startsWith('/.well-known/openid-configuration')) {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ issuer, jwks_uri: `${issuer}/jwks` }));
      } else junk(res);
    };
  } else {
    let p = provider(issuer);
    handler = p.callback();
    process.on('SIGHUP', () => {
      p = provider(issuer);
      handler = p.callback();
      console.log(`reloaded keys: ${signingKeys().map((k) => k.kid).join(' ')}`);
    });
  }
  console.log(`ready ${issuer}`);
});
