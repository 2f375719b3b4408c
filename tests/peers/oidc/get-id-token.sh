#!/bin/bash
# Prints an OIDC ID token of the test issuer, obtained through the authorization-code flow with
# PKCE, driving the issuer's development login and consent pages with curl.
#   ISSUER=https://127.0.0.1:PORT CA=/path/ca.pem get-id-token.sh [USER]
set -euo pipefail
B=${ISSUER:?ISSUER is required}; CA=${CA:?CA is required}; USER_=${1:-alice}
RU=http://127.0.0.1:54001/cb
J=$(mktemp); trap 'rm -f "$J"' EXIT
c() { curl -sS --max-time 10 --cacert "$CA" -c "$J" -b "$J" "$@"; }
VER=$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
CH=$(printf %s "$VER" | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d '=\n')
L=$(c -o /dev/null -w '%{redirect_url}' "$B/auth?client_id=web-approvals&response_type=code&scope=openid%20email&redirect_uri=$RU&code_challenge=$CH&code_challenge_method=S256&nonce=n1&state=s1")
for _ in 1 2 3 4 5 6 7 8; do
  case "$L" in
    "$RU"*) break ;;
    */interaction/*)
      P=$(c "$L" | sed -n 's/.*name="prompt" value="\([a-z]*\)".*/\1/p' | head -1)
      if [ "$P" = login ]; then
        L=$(c -o /dev/null -w '%{redirect_url}' -d prompt=login -d login="$USER_" -d password=x "$L")
      else
        L=$(c -o /dev/null -w '%{redirect_url}' -d prompt=consent "$L")
      fi ;;
    *) L=$(c -o /dev/null -w '%{redirect_url}' "$L") ;;
  esac
done
CODE=$(printf %s "$L" | sed -n 's/.*[?&]code=\([^&]*\).*/\1/p')
[ -n "$CODE" ] || { echo "get-id-token: no authorization code (last URL: $L)" >&2; exit 1; }
c -u web-approvals:web-secret -d grant_type=authorization_code -d code="$CODE" \
  -d redirect_uri="$RU" -d code_verifier="$VER" "$B/token" \
  | sed -n 's/.*"id_token":"\([^"]*\)".*/\1/p'
