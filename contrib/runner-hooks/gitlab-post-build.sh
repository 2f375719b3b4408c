# GitLab Runner (shell executor), sourced by post_build_script (see gitlab-pre-build.sh). If the job
# script fails before this runs, the next job's attach cleans the stale cgroup up once it is empty.
if [ "$(id -u)" = 0 ]; then "${GATEWAY_HOOKS:-/usr/local/lib/gateway/hooks}/gateway-hook" detach "gl-${CI_JOB_ID:?}"
else sudo -n "${GATEWAY_HOOKS:-/usr/local/lib/gateway/hooks}/gateway-hook" detach "gl-${CI_JOB_ID:?}"; fi
