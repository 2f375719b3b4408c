# Shared by the GitHub Actions hooks (sourced).

# The root helper: directly when already root, else through sudo (see sudoers.example).
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi
}

# The Runner.Worker running this job: the hook's nearest ancestor of that name.
runner_worker() {
  local p=$$
  while [ "$p" -gt 1 ]; do
    if [ "$(cat "/proc/$p/comm")" = Runner.Worker ]; then echo "$p"; return; fi
    p=$(awk '/^PPid:/ { print $2 }' "/proc/$p/status")
  done
  echo "gateway: no Runner.Worker above this hook; is it run by the Actions runner?" >&2
  return 1
}

# One key per job run: the same in the started and the completed hook.
job_key() {
  local worker
  worker=$(runner_worker) || return 1
  printf 'gh-%s-%s-%s' "${GITHUB_RUN_ID:-run}" "${GITHUB_RUN_ATTEMPT:-1}" "$worker"
}
