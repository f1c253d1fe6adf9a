#!/usr/bin/env bash
# Tells which test services are up; exit code 0 only when all of them are.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
rc=0
for pair in "kafka:$KAFKA_PORT" "kafka-sasl:$KAFKA_SASL_PORT" "postgres:$PG_PORT" "mosquitto:$MQTT_PORT" "mqtt-tls:$MQTT_TLS_PORT" "mqtt-ws:$MQTT_WS_PORT" "influxdb:$INFLUX_PORT"; do
  name=${pair%%:*} port=${pair##*:}
  if port_open "$port"; then state=up; else state=down; rc=1; fi
  printf '%-10s 127.0.0.1:%-6s %s\n' "$name" "$port" "$state"
done
cat <<ENV
# endpoints for tests (export these or rely on the same defaults):
EDGEFLOW_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
EDGEFLOW_PG_DSN=postgresql://edgeflow:edgeflow@127.0.0.1:$PG_PORT/edgeflow
EDGEFLOW_MQTT_HOST=127.0.0.1 EDGEFLOW_MQTT_PORT=$MQTT_PORT EDGEFLOW_MQTT_TLS_PORT=$MQTT_TLS_PORT EDGEFLOW_MQTT_WS_PORT=$MQTT_WS_PORT
EDGEFLOW_MQTT_CA=$STATE_DIR/mosquitto/ca.crt (user edgeflow / password edgeflow)
EDGEFLOW_INFLUX_URL=http://127.0.0.1:$INFLUX_PORT (user edgeflow / password edgeflow)
# SASL PLAIN on 127.0.0.1:$KAFKA_SASL_PORT (user edgeflow); random secrets in $SECRETS
ENV
exit $rc
