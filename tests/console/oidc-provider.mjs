// A real OpenID Connect provider for the console's single sign-on test
// (the npm package oidc-provider, with its development login pages: any
// password is accepted for the accounts below). Started by the e2e test:
//   node oidc-provider.mjs PORT REDIRECT_URI CLIENT_SECRET
// Prints "READY" once it listens.
import Provider from "oidc-provider";

const [port, redirect, secret] = process.argv.slice(2);
// Who the city's directory says each person is.
const people = {
  dana: { vitals_role: ["helpdesk"], vitals_sites: ["dispatch"] },
  olga: { vitals_role: ["it-admins"] },
  nobody: { vitals_role: ["cafeteria"] },
};

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [
    {
      client_id: "vitals-console",
      client_secret: secret,
      redirect_uris: [redirect],
      response_types: ["code"],
      grant_types: ["authorization_code"],
      token_endpoint_auth_method: "client_secret_basic",
    },
  ],
  pkce: { required: () => true },
  claims: {
    openid: ["sub"],
    profile: ["preferred_username", "vitals_role", "vitals_sites"],
  },
  // Put the claims into the ID token itself, where the console reads them.
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: true } },
  async findAccount(_ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: id, ...(people[id] ?? {}) };
      },
    };
  },
});
// oidc-provider refuses plain HTTP issuers outside development; this one
// lives on loopback for the test only.
provider.proxy = true;
provider.listen(Number(port), "127.0.0.1", () => console.log("READY"));
