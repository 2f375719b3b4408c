#!/usr/bin/env bash
# GitHub Actions self-hosted runner, job-started hook. In the runner's .env:
#   ACTIONS_RUNNER_HOOK_JOB_STARTED=/usr/local/lib/gateway/hooks/github-job-started.sh
#   ACTIONS_RUNNER_HOOK_JOB_COMPLETED=/usr/local/lib/gateway/hooks/github-job-completed.sh
#   GATEWAY_OIDC_AUDIENCE=gateway          (an audience of the gateway's [[issuers]] entry)
#
# Fetches the job's OIDC token (the workflow needs `permissions: id-token: write`), then has the
# root helper move this job's Runner.Worker into a gateway job cgroup bound to that token.
# A job without a token is bound as `unauthenticated` (set GATEWAY_REQUIRE_TOKEN=1 to fail it).
set -euo pipefail
HOOKS=$(cd "$(dirname "$0")" && pwd)
. "$HOOKS/github-common.sh"

token=""
if [ -n "${ACTIONS_ID_TOKEN_REQUEST_URL:-}" ] && [ -n "${ACTIONS_ID_TOKEN_REQUEST_TOKEN:-}" ]; then
  audience=${GATEWAY_OIDC_AUDIENCE:-gateway}
  reply=$(curl -sSf --max-time 15 --retry 2 \
    -H "Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN" \
    "${ACTIONS_ID_TOKEN_REQUEST_URL}&audience=${audience}") \
    || { echo "::error::gateway: cannot fetch the job's OIDC token" >&2; exit 1; }
  token=$(printf '%s' "$reply" | sed -n 's/.*"value"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')
  [ -n "$token" ] || { echo "::error::gateway: no token in the OIDC token reply" >&2; exit 1; }
elif [ "${GATEWAY_REQUIRE_TOKEN:-0}" = 1 ]; then
  echo "::error::gateway: this runner requires an OIDC token: add 'permissions: id-token: write' to the workflow" >&2
  exit 1
else
  echo "::warning::gateway: no OIDC token (workflow lacks 'permissions: id-token: write'); the job runs as unauthenticated" >&2
fi

worker=$(runner_worker)
key=$(job_key)
printf '%s' "$token" | as_root "$HOOKS/gateway-hook" attach "$key" "$worker"
