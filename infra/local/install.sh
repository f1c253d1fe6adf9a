#!/usr/bin/env bash
# Installs what the real services need: Debian packages (PostgreSQL, mosquitto, InfluxDB 1.x,
# JDK + Maven, openssl) and the Apache Kafka broker jars from Maven Central. Idempotent.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

need_apt=()
[[ -n "$PG_BIN" && -x "$PG_BIN/initdb" ]] || need_apt+=(postgresql)
command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || need_apt+=(mosquitto)
command -v influxd >/dev/null || need_apt+=(influxdb)
command -v java >/dev/null || need_apt+=(default-jdk-headless)
command -v mvn >/dev/null || need_apt+=(maven)
command -v openssl >/dev/null || need_apt+=(openssl)     # mosquitto's TLS listener certs
command -v runuser >/dev/null || need_apt+=(util-linux)  # PostgreSQL runs as its own user
if ((${#need_apt[@]})); then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
else
  log "Debian packages already present"
fi

if ! ls "$KAFKA_LIBS"/kafka_2.13-*.jar >/dev/null 2>&1; then
  log "fetching Kafka broker jars with Maven"
  mkdir -p "$KAFKA_LIBS"
  mvn -q -B -Dstyle.color=never -f "$INFRA_HERE/kafka/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS"
else
  log "Kafka jars already in $KAFKA_LIBS"
fi
log "install done"
