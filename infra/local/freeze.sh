#!/usr/bin/env bash
# Freezes, thaws or kills a running service (fault tests):
#   freeze.sh stop SERVICE   SIGSTOP the service's processes (PostgreSQL: with its backends),
#                            as a full disk or a lock hangs it
#   freeze.sh cont SERVICE   SIGCONT them
#   freeze.sh kill SERVICE   SIGKILL them (a crash; start.sh starts it again)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

action=${1:?stop or cont}
service=${2:?service}
case "$action" in stop) sig=STOP ;; cont) sig=CONT ;; kill) sig=KILL ;; *) log "unknown action: $action"; exit 2 ;; esac
case "$service" in
  postgres) pid="$(head -n 1 "$PG_DATA/postmaster.pid")" ;;
  mqtt | mosquitto) pid="$(cat "$STATE_DIR/mosquitto/mosquitto.pid")" ;;
  influx | influxdb) pid="$(cat "$STATE_DIR/influxdb/influxd.pid")" ;;
  kafka) pid="$(cat "$STATE_DIR/kafka/kafka.pid")" ;;
  *) log "unknown service: $service"; exit 2 ;;
esac
# The service and every process it started (a backend per PostgreSQL connection).
kill -s "$sig" "$pid" $(pgrep -P "$pid" || true)
log "$service: SIG$sig sent"
