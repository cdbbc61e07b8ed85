#!/usr/bin/env bash
# Local AWS emulators for shardflow's integration tests.
#
#   scripts/emulators.sh start    install (npm ci) if needed, start Kinesis and DynamoDB
#                                 emulators on free loopback ports, write .emulators/env
#   scripts/emulators.sh stop     stop them (SIGTERM, SIGKILL after 5 s); idempotent
#   scripts/emulators.sh status   show what is running; exit 0 only if both are up
#
# Kinesis is npm kinesis-local (kinesis-mock), DynamoDB is npm dynalite; both are pinned in
# package.json / package-lock.json at the repository root and installed into node_modules/.
# Every listening socket is bound to 127.0.0.1 (kinesis-local is forced there by
# scripts/loopback.cjs). Logs and PID files live in .emulators/.
#
# Environment:
#   KINESIS_PORT, DYNAMODB_PORT  fixed ports to use instead of free ones (start refuses to
#                                run if a port is already taken)
#   KINESIS_TLS_PORT             fixed port for kinesis-local's (unused) TLS listener
#   EMULATOR_START_TIMEOUT       seconds to wait for each emulator to answer (default 60)
#
# Tests read .emulators/env (or the SHARDFLOW_*_ENDPOINT variables it contains); see
# internal/awstest. `. .emulators/env` also exports the AWS SDKs' own variables
# (AWS_ENDPOINT_URL_KINESIS, AWS_ENDPOINT_URL_DYNAMODB, region, fake credentials), so
# the CLI, the examples and your own programs reach the emulators with no flags.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
STATE="$ROOT/.emulators"
ENV_FILE="$STATE/env"
STAMP="$ROOT/node_modules/.shardflow-npm-inputs.sha256"
KINESIS_MAIN="$ROOT/node_modules/kinesis-local/main.js"
DYNALITE_CLI="$ROOT/node_modules/dynalite/cli.js"
LOOPBACK_JS="$ROOT/scripts/loopback.cjs"
ABORT_GUARD_JS="$ROOT/scripts/abort-guard.cjs"
START_TIMEOUT="${EMULATOR_START_TIMEOUT:-60}"
NAMES=(kinesis dynamodb)

log() { printf 'emulators: %s\n' "$*" >&2; }
die() { printf 'emulators: ERROR: %s\n' "$*" >&2; exit 1; }

need_node() {
  command -v node >/dev/null 2>&1 || die "node is not installed (need Node.js >= 20)"
  local major
  major="$(node -p 'process.versions.node.split(".")[0]')"
  ((major >= 20)) || die "Node.js $(node --version) is too old; need >= 20"
}

# inputs_hash prints a digest of the files that decide what npm ci installs.
inputs_hash() {
  node -e '
    const crypto = require("crypto"), fs = require("fs");
    const h = crypto.createHash("sha256");
    for (const f of process.argv.slice(1)) h.update(fs.readFileSync(f));
    console.log(h.digest("hex"));
  ' "$ROOT/package.json" "$ROOT/package-lock.json"
}

ensure_installed() {
  local want have=""
  want="$(inputs_hash)"
  [[ -f "$STAMP" ]] && have="$(<"$STAMP")"
  if [[ "$want" == "$have" && -f "$KINESIS_MAIN" && -f "$DYNALITE_CLI" ]]; then
    return 0
  fi
  command -v npm >/dev/null 2>&1 || die "npm is not installed; it is needed to install the emulators"
  log "installing emulators (npm ci) ..."
  # --ignore-scripts: the only install script (classic-level's node-gyp-build) merely
  # checks for the bundled prebuilt binary, which node-gyp-build also finds at run time.
  (cd "$ROOT" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error </dev/null >&2) \
    || die "npm ci failed in $ROOT"
  printf '%s\n' "$want" >"$STAMP"
}

pidfile() { printf '%s/%s.pid' "$STATE" "$1"; }
portfile() { printf '%s/%s.port' "$STATE" "$1"; }

# is_ours PID NAME: the PID is alive and is the emulator we started (guards against a
# recycled PID after a crash or reboot).
is_ours() {
  local pid="$1" name="$2" cmd pattern
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  alive "$pid" || return 1
  cmd="$(ps -p "$pid" -o args= 2>/dev/null)" || return 1
  case "$name" in
    kinesis) pattern="kinesis-local/main.js" ;;
    dynamodb) pattern="dynalite/cli.js" ;;
  esac
  [[ "$cmd" == *"$pattern"* ]]
}

read_pid() {
  local f
  f="$(pidfile "$1")"
  [[ -f "$f" ]] && tr -dc '0-9' <"$f"
  return 0
}

# port_free PORT: nothing can be bound on 127.0.0.1:PORT (something on 0.0.0.0:PORT or
# 127.0.0.1:PORT makes the bind fail).
port_free() {
  node -e '
    const s = require("net").createServer();
    s.once("error", () => process.exit(1));
    s.listen({ port: Number(process.argv[1]), host: "127.0.0.1", exclusive: true }, () => s.close(() => process.exit(0)));
  ' "$1"
}

# free_ports N: prints N distinct ports that are free on 127.0.0.1 right now.
free_ports() {
  node -e '
    const net = require("net");
    const n = Number(process.argv[1]);
    const servers = [];
    let ports = [];
    const next = () => {
      if (servers.length === n) {
        ports = servers.map((s) => s.address().port);
        let open = n;
        for (const s of servers) s.close(() => { if (--open === 0) console.log(ports.join(" ")); });
        return;
      }
      const s = net.createServer();
      s.once("error", (e) => { console.error(e.message); process.exit(1); });
      s.listen({ port: 0, host: "127.0.0.1", exclusive: true }, () => { servers.push(s); next(); });
    };
    next();
  ' "$1"
}

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_port_arg() {
  local var="$1" val="$2"
  if ! [[ "$val" =~ ^[0-9]+$ ]] || ((val < 1 || val > 65535)); then
    die "$var=$val is not a port number"
  fi
}

# wait_ready NAME PID PORT: waits until PORT answers, then checks PID is still ours (the
# loser of a port race exits just after its bind fails, while the winner answers).
wait_ready() {
  local name="$1" pid="$2" port="$3" deadline=$((SECONDS + START_TIMEOUT))
  until answers "$port"; do
    if ! alive "$pid"; then
      log "$name exited during startup; last lines of $STATE/$name.log:"
      tail -n 20 "$STATE/$name.log" >&2 || true
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "$name did not answer on 127.0.0.1:$port within ${START_TIMEOUT}s; see $STATE/$name.log"
      return 1
    fi
    sleep 0.1
  done
  sleep 0.3
  if ! is_ours "$pid" "$name"; then
    log "$name (pid $pid) died right after 127.0.0.1:$port answered; another process owns the port?"
    tail -n 20 "$STATE/$name.log" >&2 || true
    return 1
  fi
}

# check_loopback_only: with ss available, verify that no process we started listens on
# anything but 127.0.0.1, and that each emulator owns the port we expect.
check_loopback_only() {
  command -v ss >/dev/null 2>&1 || { log "ss not found; skipping the listening-socket audit"; return 0; }
  local name pid lines bad
  for name in "${NAMES[@]}"; do
    pid="$(read_pid "$name")"
    lines="$(ss -Hltnp 2>/dev/null | grep -E "pid=$pid," || true)"
    [[ -n "$lines" ]] || { log "ss shows no listening socket for $name (pid $pid)"; return 1; }
    bad="$(awk '{print $4}' <<<"$lines" | grep -v '^127\.0\.0\.1:' || true)"
    if [[ -n "$bad" ]]; then
      log "$name (pid $pid) listens on a non-loopback address: $bad"
      return 1
    fi
    if ! awk '{print $4}' <<<"$lines" | grep -qx "127.0.0.1:$(<"$(portfile "$name")")"; then
      log "$name (pid $pid) does not own 127.0.0.1:$(<"$(portfile "$name")")"
      return 1
    fi
  done
}

# alive PID: the process exists and is not a zombie (an exited emulator whose new parent
# has not reaped it yet, e.g. under a container init that never reaps).
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  local stat
  stat="$(ps -p "$1" -o stat= 2>/dev/null)" || return 1
  [[ "$stat" != *Z* ]]
}

# now_us prints a monotonic-enough clock in microseconds (whole seconds on bash < 5).
now_us() {
  if [[ -n "${EPOCHREALTIME:-}" ]]; then
    printf '%s\n' "${EPOCHREALTIME/[.,]/}"
  else
    printf '%s\n' "$((SECONDS * 1000000))"
  fi
}

# wait_gone SECONDS PID...: waits up to SECONDS for every PID to exit; true if all did.
wait_gone() {
  local deadline pid left
  deadline=$(($(now_us) + $1 * 1000000))
  shift
  while :; do
    left=0
    for pid in "$@"; do
      if alive "$pid"; then left=1; fi
    done
    ((left)) || return 0
    (($(now_us) < deadline)) || return 1
    sleep 0.1
  done
}

# cmd_stop signals both emulators at once (so a slow one does not delay the other), gives
# them 5 s, then SIGKILLs what is left.
cmd_stop() {
  local name pid rc=0
  local names=() pids=()
  for name in "${NAMES[@]}"; do
    pid="$(read_pid "$name")"
    if [[ -n "$pid" ]] && is_ours "$pid" "$name"; then
      kill -TERM "$pid" 2>/dev/null || true
      names+=("$name")
      pids+=("$pid")
    elif [[ -n "$pid" ]]; then
      log "$name: stale pid file (pid $pid is not running our emulator); removing it"
    fi
  done
  if ((${#pids[@]} > 0)) && ! wait_gone 5 "${pids[@]}"; then
    local i
    for i in "${!pids[@]}"; do
      if alive "${pids[i]}"; then
        log "${names[i]} (pid ${pids[i]}) ignored SIGTERM for 5s; sending SIGKILL"
        kill -KILL "${pids[i]}" 2>/dev/null || true
      fi
    done
    wait_gone 5 "${pids[@]}" || true
  fi
  local i
  for i in "${!pids[@]}"; do
    if alive "${pids[i]}"; then
      log "${names[i]} (pid ${pids[i]}) is still alive after SIGKILL; leaving its pid file"
      rc=1
    else
      log "stopped ${names[i]} (pid ${pids[i]})"
    fi
  done
  for name in "${NAMES[@]}"; do
    pid="$(read_pid "$name")"
    if [[ -z "$pid" ]] || ! alive "$pid" || ! is_ours "$pid" "$name"; then
      rm -f "$(pidfile "$name")" "$(portfile "$name")"
    fi
  done
  rm -f "$ENV_FILE"
  return "$rc"
}

# print_endpoints writes the env file: `. .emulators/env` points this shell's
# programs at the emulators. The SHARDFLOW_* names are for the tests; the AWS_*
# ones are the SDKs' own (service endpoints, region, fake credentials, no
# instance metadata lookups), so the CLI, the examples and any program that
# loads its AWS config the standard way talk to the emulators and nothing else.
print_endpoints() {
  local k d
  k="http://127.0.0.1:$(<"$(portfile kinesis)")"
  d="http://127.0.0.1:$(<"$(portfile dynamodb)")"
  printf 'export SHARDFLOW_KINESIS_ENDPOINT=%s\n' "$k"
  printf 'export SHARDFLOW_DYNAMODB_ENDPOINT=%s\n' "$d"
  printf 'export AWS_ENDPOINT_URL_KINESIS=%s\n' "$k"
  printf 'export AWS_ENDPOINT_URL_DYNAMODB=%s\n' "$d"
  printf 'export AWS_REGION=us-east-1\n'
  printf 'export AWS_ACCESS_KEY_ID=local-emulator\n'
  printf 'export AWS_SECRET_ACCESS_KEY=local-emulator\n'
  printf 'export AWS_EC2_METADATA_DISABLED=true\n'
}

cmd_status() {
  local name pid up=0
  for name in "${NAMES[@]}"; do
    pid="$(read_pid "$name")"
    if [[ -n "$pid" ]] && is_ours "$pid" "$name"; then
      local port
      port="$(cat "$(portfile "$name")" 2>/dev/null || echo '?')"
      if answers "$port"; then
        printf '%-8s running  pid %-7s http://127.0.0.1:%s\n' "$name" "$pid" "$port"
        up=$((up + 1))
      else
        printf '%-8s NOT ANSWERING  pid %-7s port %s\n' "$name" "$pid" "$port"
      fi
    elif [[ -n "$pid" ]]; then
      printf '%-8s stopped (stale pid file: %s)\n' "$name" "$pid"
    else
      printf '%-8s stopped\n' "$name"
    fi
  done
  if ((up == ${#NAMES[@]})); then
    [[ -f "$ENV_FILE" ]] && printf 'env file: %s\n' "$ENV_FILE"
    return 0
  fi
  return 3
}

start_failed() {
  local rc=$?
  trap - EXIT INT TERM
  if ((rc != 0)); then
    log "start failed; stopping whatever this run started"
    cmd_stop >/dev/null 2>&1 || true
  fi
  exit "$rc"
}

cmd_start() {
  need_node
  mkdir -p "$STATE"

  local name pid running=0
  for name in "${NAMES[@]}"; do
    pid="$(read_pid "$name")"
    if [[ -n "$pid" ]] && is_ours "$pid" "$name"; then running=$((running + 1)); fi
  done
  if ((running == ${#NAMES[@]})) && [[ -f "$ENV_FILE" ]] && cmd_status >/dev/null; then
    log "already running"
    cat "$ENV_FILE"
    return 0
  fi
  # Partial or stale state: clean it up and start afresh.
  if ((running > 0)); then
    log "only $running of ${#NAMES[@]} emulators running; restarting all of them"
  fi
  cmd_stop >/dev/null 2>&1 || die "could not stop the previous emulators; see 'scripts/emulators.sh status'"

  ensure_installed

  local kport dport tport picked
  picked="$(free_ports 3)" || die "could not find free loopback ports"
  read -r kport tport dport <<<"$picked"
  if [[ -n "${KINESIS_PORT:-}" ]]; then check_port_arg KINESIS_PORT "$KINESIS_PORT"; kport="$KINESIS_PORT"; fi
  if [[ -n "${KINESIS_TLS_PORT:-}" ]]; then check_port_arg KINESIS_TLS_PORT "$KINESIS_TLS_PORT"; tport="$KINESIS_TLS_PORT"; fi
  if [[ -n "${DYNAMODB_PORT:-}" ]]; then check_port_arg DYNAMODB_PORT "$DYNAMODB_PORT"; dport="$DYNAMODB_PORT"; fi
  if [[ "$kport" == "$dport" || "$kport" == "$tport" || "$tport" == "$dport" ]]; then
    die "ports must differ (kinesis $kport, kinesis TLS $tport, dynamodb $dport)"
  fi
  local p
  for p in "$kport" "$tport" "$dport"; do
    port_free "$p" || die "port 127.0.0.1:$p is already in use; refusing to start (stop the other process or pick another port)"
  done

  trap start_failed EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  local t0=$SECONDS
  (
    cd "$ROOT"
    exec env \
      KINESIS_MOCK_PLAIN_PORT="$kport" \
      KINESIS_MOCK_TLS_PORT="$tport" \
      KINESIS_MOCK_CERT_PATH="$ROOT/node_modules/kinesis-local/server.json" \
      SHARD_LIMIT=1000 \
      LOG_LEVEL=WARN \
      CREATE_STREAM_DURATION=50ms \
      DELETE_STREAM_DURATION=50ms \
      SPLIT_SHARD_DURATION=50ms \
      MERGE_SHARDS_DURATION=50ms \
      UPDATE_SHARD_COUNT_DURATION=50ms \
      REGISTER_STREAM_CONSUMER_DURATION=50ms \
      DEREGISTER_STREAM_CONSUMER_DURATION=50ms \
      UPDATE_STREAM_MODE_DURATION=50ms \
      SHOULD_PERSIST_DATA=false \
      nohup node -r "$LOOPBACK_JS" "$KINESIS_MAIN"
  ) </dev/null >"$STATE/kinesis.log" 2>&1 &
  printf '%s\n' "$!" >"$(pidfile kinesis)"
  printf '%s\n' "$kport" >"$(portfile kinesis)"

  (
    cd "$ROOT"
    exec nohup node -r "$LOOPBACK_JS" -r "$ABORT_GUARD_JS" "$DYNALITE_CLI" \
      --host 127.0.0.1 --port "$dport" \
      --createTableMs 50 --deleteTableMs 50 --updateTableMs 50
  ) </dev/null >"$STATE/dynamodb.log" 2>&1 &
  printf '%s\n' "$!" >"$(pidfile dynamodb)"
  printf '%s\n' "$dport" >"$(portfile dynamodb)"

  wait_ready kinesis "$(read_pid kinesis)" "$kport" || die "kinesis emulator failed to start"
  wait_ready dynamodb "$(read_pid dynamodb)" "$dport" || die "dynamodb emulator failed to start"
  check_loopback_only || die "listening-socket audit failed"

  local tmp="$ENV_FILE.tmp.$$"
  print_endpoints >"$tmp"
  mv -f "$tmp" "$ENV_FILE"
  trap - EXIT INT TERM

  log "started in $((SECONDS - t0))s: kinesis pid $(read_pid kinesis), dynamodb pid $(read_pid dynamodb); logs in $STATE"
  cat "$ENV_FILE"
}

usage() {
  sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit "$1"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  -h | --help | help) usage 0 ;;
  *) usage 2 ;;
esac
