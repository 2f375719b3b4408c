# GitLab Runner (shell executor), sourced by pre_build_script in config.toml:
#   [[runners]]
#     pre_build_script = ". /usr/local/lib/gateway/hooks/gitlab-pre-build.sh"
#     post_build_script = ". /usr/local/lib/gateway/hooks/gitlab-post-build.sh"
# and in .gitlab-ci.yml, a token for the gateway's audience:
#   id_tokens:
#     GATEWAY_ID_TOKEN:
#       aud: https://gateway.example.com
# Sourced, so that $$ is the job's shell: it is moved into a gateway job cgroup bound to the token,
# and the job script it runs next is intercepted. The token goes through stdin, never argv.
printf '%s' "${GATEWAY_ID_TOKEN:-}" | {
  if [ "$(id -u)" = 0 ]; then "${GATEWAY_HOOKS:-/usr/local/lib/gateway/hooks}/gateway-hook" attach "gl-${CI_JOB_ID:?}" "$$"
  else sudo -n "${GATEWAY_HOOKS:-/usr/local/lib/gateway/hooks}/gateway-hook" attach "gl-${CI_JOB_ID:?}" "$$"; fi
} || exit 1
