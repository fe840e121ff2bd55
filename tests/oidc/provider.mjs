// The OpenID Provider the sign-in tests run against: `oidc-provider` (the certified
// Node.js implementation) on a loopback port the kernel picks, with one confidential
// client and two accounts. tests/common/oidc.rs starts it and waits for its ready line:
//
//   oidc-provider on http://127.0.0.1:PORT
//
// Environment: CLIENT_SECRET (the client `pipe`'s secret) and REDIRECT_URIS (the
// callback URLs the client may use, comma-separated). The login page is the provider's
// own development form: the login typed is the account id, any password passes, and
// only the accounts below exist. Consent is implied (the client is first-party).
//
// Client-credentials tokens are JWTs whose audience is the resource asked for:
// `urn:pipe` gives audience `pipe` (the client id piped checks), `urn:other` gives
// `other` (a token for someone else).
//
// The signing key is made at start (RS256), so that `GET /test/mint?claims=JSON` can
// sign any claims with the provider's own key: tokens that are expired, for another
// audience or naming another issuer, yet carry a good signature.
import http from 'node:http';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import Provider from 'oidc-provider';

const ACCOUNTS = {
  alice: { email: 'alice@example.com', email_verified: true, groups: ['staff'] },
  mallory: { email: 'mallory@evil.test', email_verified: true, groups: ['outsiders'] },
};
const AUDIENCES = { 'urn:pipe': 'pipe', 'urn:other': 'other' };

const secret = process.env.CLIENT_SECRET;
const redirects = (process.env.REDIRECT_URIS || '').split(',').filter(Boolean);
if (!secret || redirects.length === 0) {
  console.error('set CLIENT_SECRET and REDIRECT_URIS');
  process.exit(2);
}

const KID = 'test-key-1';
const { privateKey } = await generateKeyPair('RS256', { extractable: true });
const signingJwk = { ...(await exportJWK(privateKey)), kid: KID, alg: 'RS256', use: 'sig' };

async function mint(req, res) {
  const claims = JSON.parse(new URL(req.url, 'http://x').searchParams.get('claims') || '{}');
  const jwt = await new SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: KID }).sign(privateKey);
  res.writeHead(200, { 'content-type': 'text/plain' });
  res.end(jwt);
}

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    jwks: { keys: [signingJwk] },
    clients: [{
      client_id: 'pipe',
      client_secret: secret,
      redirect_uris: redirects,
      grant_types: ['authorization_code', 'client_credentials'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
    },
    scopes: ['openid', 'email', 'groups', 'api'],
    // Claims go into the ID token itself, not only into the userinfo answer.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    async findAccount(_ctx, id) {
      const account = ACCOUNTS[id];
      if (!account) return undefined;
      return { accountId: id, claims: async () => ({ sub: id, ...account }) };
    },
    async loadExistingGrant(ctx) {
      const { client, session } = ctx.oidc;
      const grantId = ctx.oidc.result?.consent?.grantId || session.grantIdFor(client.clientId);
      if (grantId) return ctx.oidc.provider.Grant.find(grantId);
      const grant = new ctx.oidc.provider.Grant({ clientId: client.clientId, accountId: session.accountId });
      grant.addOIDCScope('openid email groups');
      await grant.save();
      return grant;
    },
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        async getResourceServerInfo(_ctx, resource) {
          const audience = AUDIENCES[resource];
          if (!audience) throw new Error(`unknown resource ${resource}`);
          return { scope: 'api', audience, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } };
        },
      },
    },
  });
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));
  const app = provider.callback();
  server.on('request', (req, res) => {
    if (req.url.startsWith('/test/mint')) {
      mint(req, res).catch((e) => { res.writeHead(400); res.end(String(e)); });
    } else {
      app(req, res);
    }
  });
  console.log(`oidc-provider on ${issuer}`);
});
