#!/usr/bin/env bash
# GitHub Actions self-hosted runner, job-completed hook (see github-job-started.sh): hands the
# Runner.Worker back, ends what the job left running, and unbinds the job's cgroup.
set -euo pipefail
HOOKS=$(cd "$(dirname "$0")" && pwd)
. "$HOOKS/github-common.sh"
key=$(job_key)
as_root "$HOOKS/gateway-hook" detach "$key"
