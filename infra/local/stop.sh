#!/usr/bin/env bash
# Stops the services started by start.sh (all by default, or the ones named).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

stop_pidfile() {
  local name=$1 pidfile=$2 comm=$3 i
  if pidfile_alive "$pidfile" "$comm"; then
    kill "$(cat "$pidfile")"
    for ((i = 0; i < 120; i++)); do pidfile_alive "$pidfile" "$comm" || break; sleep 0.25; done
    if pidfile_alive "$pidfile" "$comm"; then kill -9 "$(cat "$pidfile")"; fi
    log "$name stopped"
  else
    log "$name not running"
  fi
  rm -f "$pidfile"
}

services=("$@")
((${#services[@]})) || services=(kafka influx mqtt postgres)
for s in "${services[@]}"; do
  case "$s" in
    postgres)
      if [[ -f "$PG_DATA/postmaster.pid" ]]; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null && log "postgres stopped"
      else
        log "postgres not running"
      fi ;;
    mqtt | mosquitto) stop_pidfile mosquitto "$STATE_DIR/mosquitto/mosquitto.pid" mosquitto ;;
    influx | influxdb) stop_pidfile influxdb "$STATE_DIR/influxdb/influxd.pid" influxd ;;
    kafka) stop_pidfile kafka "$STATE_DIR/kafka/kafka.pid" java ;;
    *) log "unknown service: $s"; exit 2 ;;
  esac
done
