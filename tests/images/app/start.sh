#!/bin/sh
# Entrypoint of the dso test app (a test fixture). It fingerprints the configured secret once at
# start and again on SIGHUP, like a real service that reads its secrets when it loads its
# configuration, then serves:
#   GET /health               200 "ok" once the first fingerprint is written
#   GET /secret-version       fingerprints of what the app loaded (never the value), e.g.
#                               env=3f2a9c0d1b7e4a55
#                               file=missing
#                               loads=1
#   GET /cgi-bin/env/NAME     the raw value of environment variable NAME (test-only, see README)
# Settings: APP_SECRET_ENV (name of the variable to fingerprint, default APP_SECRET),
# APP_SECRET_FILE (path of a file to fingerprint, optional), APP_PORT (default 8080).
# A fingerprint is the first 16 hex digits of the SHA-256 of the exact bytes; "unset" means the
# variable does not exist, "missing" that the file cannot be read.
set -u

secret_env=${APP_SECRET_ENV:-APP_SECRET}
case $secret_env in
  ''|[0-9]*|*[!A-Za-z0-9_]*)
    echo "start.sh: APP_SECRET_ENV is not a variable name" >&2
    exit 2
    ;;
esac

loads=0

# Fingerprint of stdin: 16 hex digits of its SHA-256.
fingerprint() {
  sha256sum | cut -c1-16
}

# Writes /www/secret-version by rename so a request never sees half a file. Only fingerprints
# are written: the container layer is on the host's disk.
load() {
  loads=$((loads + 1))
  if eval "[ -n \"\${$secret_env+set}\" ]"; then
    env_fp=$(eval "printf '%s' \"\${$secret_env}\"" | fingerprint)
  else
    env_fp=unset
  fi
  {
    echo "env=$env_fp"
    if [ -n "${APP_SECRET_FILE:-}" ]; then
      if [ -r "$APP_SECRET_FILE" ]; then
        echo "file=$(fingerprint < "$APP_SECRET_FILE")"
      else
        echo "file=missing"
      fi
    fi
    echo "loads=$loads"
  } > /www/.secret-version.new
  mv /www/.secret-version.new /www/secret-version
  echo ok > /www/health
}

load
# LIMITATION: busybox httpd speaks HTTP/1.0 without keep-alive and forks per connection — enough
# for bounded load tests; a real server binary in the image would lift it.
httpd -f -p "0.0.0.0:${APP_PORT:-8080}" -h /www &
httpd_pid=$!

# PID 1 gets no default signal handlers, so stop and reload are explicit.
trap 'load' HUP
trap 'kill -TERM "$httpd_pid" 2>/dev/null' TERM INT

# `wait` returns early whenever a trapped signal arrives; keep waiting until httpd is gone.
while :; do
  wait "$httpd_pid"
  status=$?
  kill -0 "$httpd_pid" 2>/dev/null || break
done
case $status in
  143|130) exit 0 ;;
  *) exit "$status" ;;
esac
