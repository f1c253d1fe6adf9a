# shellcheck shell=bash
# Shared settings for the infra/local scripts. Every port binds to 127.0.0.1 only.
# Override any of these in the environment; tests read the EDGEFLOW_* endpoints.
set -euo pipefail

INFRA_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE_DIR="${EDGEFLOW_INFRA_DIR:-/var/tmp/edgeflow-infra}"
KAFKA_LIBS="${STATE_DIR}/kafka/libs"

KAFKA_PORT="${EDGEFLOW_KAFKA_PORT:-19092}"
KAFKA_SASL_PORT="${EDGEFLOW_KAFKA_SASL_PORT:-19094}"
KAFKA_CONTROLLER_PORT="${EDGEFLOW_KAFKA_CONTROLLER_PORT:-19093}"
PG_PORT="${EDGEFLOW_PG_PORT:-15432}"
MQTT_PORT="${EDGEFLOW_MQTT_PORT:-11883}"
MQTT_TLS_PORT="${EDGEFLOW_MQTT_TLS_PORT:-18884}"
MQTT_WS_PORT="${EDGEFLOW_MQTT_WS_PORT:-19001}"
INFLUX_PORT="${EDGEFLOW_INFLUX_PORT:-18086}"
INFLUX_RPC_PORT="${EDGEFLOW_INFLUX_RPC_PORT:-18088}"

PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
# Password authentication (scram-sha-256) everywhere: a fresh data directory name, so a
# directory initialised with trust authentication by an older script is never reused.
PG_DATA="$STATE_DIR/postgres/data-scram"
SECRETS="$STATE_DIR/secrets.env"

log() { printf '[infra] %s\n' "$*" >&2; }

# port_open PORT -> 0 when something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port NAME PORT TIMEOUT_S
wait_port() {
  local name=$1 port=$2 timeout_s=$3 i
  for ((i = 0; i < timeout_s * 4; i++)); do
    if port_open "$port"; then log "$name is up on 127.0.0.1:$port"; return 0; fi
    sleep 0.25
  done
  log "$name did not open 127.0.0.1:$port within ${timeout_s}s"
  return 1
}

# pidfile_alive PIDFILE [COMMAND]: the pid in the file runs (and is COMMAND, so that a stale
# pid reused by another process after a reboot is never signalled).
pidfile_alive() {
  [[ -f "$1" ]] || return 1
  local pid
  pid="$(cat "$1")"
  kill -0 "$pid" 2>/dev/null || return 1
  [[ -z "${2:-}" ]] || [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]]
}

# ensure_secrets: random per-installation secrets for the test services (0600). The default
# accounts keep documented test passwords (edgeflow/edgeflow); the *_SECRET accounts exist so
# tests can grep every output for a value that appears nowhere else.
ensure_secrets() {
  mkdir -p "$STATE_DIR"
  if [[ ! -s "$SECRETS" ]]; then
    local r
    r() { head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20; }
    umask 077
    cat >"$SECRETS" <<SEC
PG_ADMIN_PASSWORD=pgadmin-$(r)
PG_SECRET_PASSWORD=pgsecret-$(r)
INFLUX_ADMIN_PASSWORD=influxadmin-$(r)
INFLUX_SECRET_PASSWORD=influxsecret-$(r)
KAFKA_SASL_PASSWORD=kafkasasl-$(r)
MQTT_SECRET_PASSWORD=mqttsecret-$(r)
SEC
    umask 022
  fi
  chmod 0600 "$SECRETS"
  # shellcheck disable=SC1090
  source "$SECRETS"
}
