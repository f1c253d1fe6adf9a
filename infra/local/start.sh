#!/usr/bin/env bash
# Starts the test services on 127.0.0.1 (all by default, or the ones named: kafka postgres mqtt influx).
# Idempotent: a service that is already up is left alone.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
mkdir -p "$STATE_DIR"

start_postgres() {
  local data="$PG_DATA" run="$STATE_DIR/postgres/run"
  if port_open "$PG_PORT"; then log "postgres already up"; return 0; fi
  mkdir -p "$STATE_DIR/postgres" "$run"
  chown -R postgres:postgres "$STATE_DIR/postgres"
  if [[ ! -f "$data/PG_VERSION" ]]; then
    log "initdb $data (scram-sha-256 for every connection)"
    local pwfile="$STATE_DIR/postgres/initdb.pw"
    (umask 077 && printf '%s\n' "$PG_ADMIN_PASSWORD" >"$pwfile")
    chown postgres "$pwfile"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$data" -U postgres --encoding=UTF8 \
      --auth-local=scram-sha-256 --auth-host=scram-sha-256 --pwfile="$pwfile" >/dev/null
    rm -f "$pwfile"
  fi
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$data" -l "$STATE_DIR/postgres/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $run -c fsync=off -c max_connections=200" start >/dev/null
  wait_port postgres "$PG_PORT" 60
  local psql=(env "PGPASSWORD=$PG_ADMIN_PASSWORD" "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres
    -d postgres -v ON_ERROR_STOP=1 -qtA)
  # The sink's role: a plain login that owns its database, never a superuser.
  "${psql[@]}" -c "do \$\$ begin
      if not exists (select from pg_roles where rolname = 'edgeflow') then
        create role edgeflow login nosuperuser password 'edgeflow';
      else alter role edgeflow nosuperuser password 'edgeflow'; end if;
      if not exists (select from pg_roles where rolname = 'edgeflow_secret') then
        create role edgeflow_secret login nosuperuser password '$PG_SECRET_PASSWORD';
      else alter role edgeflow_secret nosuperuser password '$PG_SECRET_PASSWORD'; end if;
    end \$\$"
  if [[ "$("${psql[@]}" -c "select 1 from pg_database where datname='edgeflow'")" != 1 ]]; then
    "${psql[@]}" -c "create database edgeflow owner edgeflow"
  fi
  "${psql[@]}" -c "grant create, connect on database edgeflow to edgeflow_secret"
}

start_mqtt() {
  local dir="$STATE_DIR/mosquitto"
  if port_open "$MQTT_PORT" && port_open "$MQTT_TLS_PORT" && port_open "$MQTT_WS_PORT"; then
    log "mosquitto already up"
    return 0
  fi
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
  mosquitto_passwd -b "$dir/passwd" edgeflow_secret "$MQTT_SECRET_PASSWORD"
  cat >"$dir/mosquitto.conf" <<CONF
per_listener_settings true
persistence false
max_queued_messages 1000000
max_inflight_messages 1000
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
# MQTT over WebSocket for browser screens (infra/hmi/index.html), anonymous, loopback.
listener $MQTT_WS_PORT 127.0.0.1
protocol websockets
allow_anonymous true
CONF
  # Private keys and the password file: readable by mosquitto only.
  chown -R mosquitto:mosquitto "$dir" 2>/dev/null || true
  chmod 0600 "$dir"/*.key "$dir/passwd"
  mosquitto -c "$dir/mosquitto.conf" -d
  wait_port mosquitto "$MQTT_PORT" 30
  wait_port mosquitto-tls "$MQTT_TLS_PORT" 30
  wait_port mosquitto-ws "$MQTT_WS_PORT" 30
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
  auth-enabled = true
[monitor]
  store-enabled = false
CONF
  nohup influxd -config "$dir/influxdb.conf" >"$dir/influxd.log" 2>&1 &
  echo $! >"$dir/influxd.pid"
  wait_port influxdb "$INFLUX_PORT" 60
  # The HTTP port opens before the meta store serves queries. With authentication on, the
  # first statement must create the admin; after that, every statement authenticates.
  local i
  for ((i = 0; i < 120; i++)); do
    if python3 - "$INFLUX_PORT" <<'PY' 2>/dev/null; then log "influxdb is ready (authentication on)"; return 0; fi
import base64, os, sys, urllib.error, urllib.parse, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/query"
admin = os.environ["INFLUX_ADMIN_PASSWORD"]
def q(stmt, auth=True):
    req = urllib.request.Request(url, data=urllib.parse.urlencode({"q": stmt}).encode())
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"admin:{admin}".encode()).decode())
    with urllib.request.urlopen(req, timeout=5) as r:
        body = r.read().decode()
        if '"error"' in body:
            raise RuntimeError(body)
try:
    q(f"CREATE USER admin WITH PASSWORD '{admin}' WITH ALL PRIVILEGES", auth=False)
except urllib.error.HTTPError:
    pass  # users exist: authenticate from now on
secret = os.environ["INFLUX_SECRET_PASSWORD"]
for stmt in (
    "CREATE DATABASE edgeflow",
    "CREATE USER edgeflow WITH PASSWORD 'edgeflow'",
    "SET PASSWORD FOR edgeflow = 'edgeflow'",
    "GRANT ALL ON edgeflow TO edgeflow",
    f"CREATE USER edgeflow_secret WITH PASSWORD '{secret}'",
    f"SET PASSWORD FOR edgeflow_secret = '{secret}'",
    "GRANT ALL ON edgeflow TO edgeflow_secret",
):
    try:
        q(stmt)
    except RuntimeError as e:
        if "already exists" not in str(e):
            raise
PY
    sleep 0.5
  done
  log "influxdb never accepted its users"; return 1
}

start_kafka() {
  local dir="$STATE_DIR/kafka"
  if port_open "$KAFKA_PORT"; then log "kafka already up"; return 0; fi
  ls "$KAFKA_LIBS"/kafka_2.13-*.jar >/dev/null 2>&1 || { log "Kafka jars missing: run infra/local/install.sh"; return 1; }
  mkdir -p "$dir"
  (umask 077 && cat >"$dir/server.properties" <<CONF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_edgeflow="$KAFKA_SASL_PASSWORD";
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
  )
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
  wait_port kafka-sasl "$KAFKA_SASL_PORT" 30 || return 1
  # The listener opens before the broker has joined its KRaft quorum: wait for the log line.
  local i
  for ((i = 0; i < 360; i++)); do
    if grep -q "Kafka Server started" "$dir/server.log" 2>/dev/null; then log "kafka is ready"; return 0; fi
    sleep 0.25
  done
  log "kafka did not report 'Kafka Server started'"; tail -n 40 "$dir/server.log" >&2; return 1
}

ensure_secrets
export INFLUX_ADMIN_PASSWORD INFLUX_SECRET_PASSWORD
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
