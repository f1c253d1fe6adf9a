#!/usr/bin/env bash
# Starts the test services on 127.0.0.1 (all by default, or the ones named: kafka postgres mqtt influx).
# Idempotent: a service that is already up is left alone.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
mkdir -p "$STATE_DIR"

start_postgres() {
  local data="$STATE_DIR/postgres/data" run="$STATE_DIR/postgres/run"
  if port_open "$PG_PORT"; then log "postgres already up"; return 0; fi
  mkdir -p "$STATE_DIR/postgres" "$run"
  chown -R postgres:postgres "$STATE_DIR/postgres"
  if [[ ! -f "$data/PG_VERSION" ]]; then
    log "initdb $data"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$data" -A trust -U postgres --encoding=UTF8 >/dev/null
  fi
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$data" -l "$STATE_DIR/postgres/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $run -c fsync=off -c max_connections=200" start >/dev/null
  wait_port postgres "$PG_PORT" 60
  local psql=("$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qtA)
  if [[ "$("${psql[@]}" -c "select 1 from pg_roles where rolname='edgeflow'")" != 1 ]]; then
    "${psql[@]}" -c "create role edgeflow login superuser password 'edgeflow'"
  fi
  if [[ "$("${psql[@]}" -c "select 1 from pg_database where datname='edgeflow'")" != 1 ]]; then
    "${psql[@]}" -c "create database edgeflow owner edgeflow"
  fi
}

start_mqtt() {
  local dir="$STATE_DIR/mosquitto"
  if port_open "$MQTT_PORT" && port_open "$MQTT_TLS_PORT"; then log "mosquitto already up"; return 0; fi
  if pidfile_alive "$dir/mosquitto.pid" mosquitto; then kill "$(cat "$dir/mosquitto.pid")"; sleep 0.5; fi
  mkdir -p "$dir"
  # A second listener with TLS (a local CA signs a cert for 127.0.0.1) and username/password.
  if [[ ! -f "$dir/server.crt" ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=edgeflow-test-ca" \
      -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
      -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$dir/san.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
      -CAcreateserial -days 3650 -extfile "$dir/san.ext" -out "$dir/server.crt" 2>/dev/null
  fi
  : >"$dir/passwd"
  mosquitto_passwd -b "$dir/passwd" edgeflow edgeflow
  cat >"$dir/mosquitto.conf" <<CONF
per_listener_settings true
persistence false
log_dest file $dir/mosquitto.log
pid_file $dir/mosquitto.pid
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
listener $MQTT_TLS_PORT 127.0.0.1
allow_anonymous false
password_file $dir/passwd
cafile $dir/ca.crt
certfile $dir/server.crt
keyfile $dir/server.key
CONF
  chown -R mosquitto:mosquitto "$dir" 2>/dev/null || true
  chmod 0644 "$dir"/*.key "$dir/passwd" 2>/dev/null || true
  mosquitto -c "$dir/mosquitto.conf" -d
  wait_port mosquitto "$MQTT_PORT" 30
  wait_port mosquitto-tls "$MQTT_TLS_PORT" 30
}

start_influx() {
  local dir="$STATE_DIR/influxdb"
  if port_open "$INFLUX_PORT"; then log "influxdb already up"; return 0; fi
  mkdir -p "$dir"
  cat >"$dir/influxdb.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:$INFLUX_RPC_PORT"
[meta]
  dir = "$dir/meta"
[data]
  dir = "$dir/data"
  wal-dir = "$dir/wal"
  query-log-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:$INFLUX_PORT"
  log-enabled = false
[monitor]
  store-enabled = false
CONF
  nohup influxd -config "$dir/influxdb.conf" >"$dir/influxd.log" 2>&1 &
  echo $! >"$dir/influxd.pid"
  wait_port influxdb "$INFLUX_PORT" 60
  # The HTTP port opens before the meta store serves queries: wait until a DDL succeeds.
  local i
  for ((i = 0; i < 120; i++)); do
    if python3 - "$INFLUX_PORT" <<'PY' 2>/dev/null; then log "influxdb is ready"; return 0; fi
import sys, urllib.parse, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/query"
data = urllib.parse.urlencode({"q": "CREATE DATABASE edgeflow"}).encode()
with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=5) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
    sleep 0.5
  done
  log "influxdb never accepted CREATE DATABASE"; return 1
}

start_kafka() {
  local dir="$STATE_DIR/kafka"
  if port_open "$KAFKA_PORT"; then log "kafka already up"; return 0; fi
  ls "$KAFKA_LIBS"/kafka_2.13-*.jar >/dev/null 2>&1 || { log "Kafka jars missing: run infra/local/install.sh"; return 1; }
  mkdir -p "$dir"
  cat >"$dir/server.properties" <<CONF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=3
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=168
CONF
  local java_opts=(-Xms256m -Xmx768m -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$INFRA_HERE/kafka/log4j2.properties" "-Dkafka.logs.dir=$dir")
  if [[ ! -f "$dir/data/meta.properties" ]]; then
    log "formatting KRaft storage in $dir/data"
    java "${java_opts[@]}" -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format \
      -t "edgeflow-local-kraft-01" -c "$dir/server.properties" --ignore-formatted >"$dir/format.log" 2>&1 \
      || { cat "$dir/format.log" >&2; return 1; }
  fi
  [[ -f "$dir/server.log" ]] && mv -f "$dir/server.log" "$dir/server.log.1"
  nohup java "${java_opts[@]}" -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties" >"$dir/kafka.out" 2>&1 &
  echo $! >"$dir/kafka.pid"
  wait_port kafka "$KAFKA_PORT" 90 || { tail -n 40 "$dir/kafka.out" >&2; return 1; }
  # The listener opens before the broker has joined its KRaft quorum: wait for the log line.
  local i
  for ((i = 0; i < 360; i++)); do
    if grep -q "Kafka Server started" "$dir/server.log" 2>/dev/null; then log "kafka is ready"; return 0; fi
    sleep 0.25
  done
  log "kafka did not report 'Kafka Server started'"; tail -n 40 "$dir/server.log" >&2; return 1
}

services=("$@")
((${#services[@]})) || services=(postgres mqtt influx kafka)
for s in "${services[@]}"; do
  case "$s" in
    postgres) start_postgres ;;
    mqtt | mosquitto) start_mqtt ;;
    influx | influxdb) start_influx ;;
    kafka) start_kafka ;;
    *) log "unknown service: $s (known: postgres mqtt influx kafka)"; exit 2 ;;
  esac
done
