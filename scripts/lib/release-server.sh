# Sourced by scripts/soak and scripts/capacity: the release voxrt server on an OS-picked
# port with the bench profile (config/bench.toml: per-address limits raised so that one
# machine's loopback clients can open every session, up to 10,000), and JSON logs in a file.
#
#   start_release_server LOG SESSIONS   # sets $server (pid) and $port; exits 2 if it fails
#   stop_release_server                 # SIGTERM, waits up to 30 s; sets $server_rc

start_release_server() {
  local log=$1 sessions=$2
  if ((sessions > 10000)); then
    echo "$(basename "$0"): the bench profile admits at most 10000 sessions" >&2
    exit 2
  fi
  VOXRT_PROFILE=bench VOXRT_SERVER__PORT=0 \
    VOXRT_LOG__FORMAT=json VOXRT_LOG__LEVEL=info \
    target/release/voxrt >"$log" 2>&1 &
  server=$!
  # The port, from the "voxrt listening" log line.
  port=""
  for _ in $(seq 300); do
    port=$(python3 - "$log" <<'PY' || true
import json, sys
for line in open(sys.argv[1], errors="replace"):
    try:
        v = json.loads(line)
    except ValueError:
        continue
    fields = v.get("fields", v)
    if fields.get("message") == "voxrt listening" or v.get("message") == "voxrt listening":
        print((fields.get("addr") or v.get("addr")).rsplit(":", 1)[1])
        break
PY
    )
    [[ -n $port ]] && break
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
  done
  if [[ -z $port ]]; then
    echo "$(basename "$0"): the server did not start; its log ($log):" >&2
    tail -n 20 "$log" >&2
    exit 2
  fi
}

stop_release_server() {
  server_rc=0
  [[ -n ${server:-} ]] || return 0
  kill -TERM "$server" 2>/dev/null || true
  for _ in $(seq 300); do
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$server" 2>/dev/null; then
    echo "$(basename "$0"): the server did not exit within 30 s of SIGTERM; killing it" >&2
    kill -KILL "$server" 2>/dev/null || true
    server_rc=137
  fi
  wait "$server" || server_rc=$?
  server=""
}
