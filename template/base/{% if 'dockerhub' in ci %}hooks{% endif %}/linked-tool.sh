# shellcheck shell=bash
# Sourced by the Docker Hub hooks (Docker Hub runs only build, pre_build, post_push, ...):
# `tool ARGS` runs base/linked.py with python3, or in a python image where the
# build machine has no python3. Needs $root, the repository's top folder.
# shellcheck disable=SC2154  # $root is set by the hook that sources this file
tool() {
  if command -v python3 >/dev/null 2>&1; then
    python3 "$root/base/linked.py" --root "$root" "$@"
  else
    docker run --rm --volume "$root:/src:ro" --workdir /src python:3-slim python3 base/linked.py "$@"
  fi
}
