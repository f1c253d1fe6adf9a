#!/usr/bin/env bash
# Installs what the real services need: Debian packages (PostgreSQL, mosquitto, InfluxDB 1.x,
# JDK + Maven, openssl, headless Chromium, Prometheus) and the Apache Kafka broker jars from Maven Central. Idempotent.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

need_apt=()
[[ -n "$PG_BIN" && -x "$PG_BIN/initdb" ]] || need_apt+=(postgresql)
command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || need_apt+=(mosquitto)
command -v influxd >/dev/null || need_apt+=(influxdb)
command -v java >/dev/null || need_apt+=(default-jdk-headless)
command -v mvn >/dev/null || need_apt+=(maven)
command -v openssl >/dev/null || need_apt+=(openssl)     # mosquitto's TLS listener certs
command -v runuser >/dev/null || need_apt+=(util-linux)  # PostgreSQL runs as its own user
command -v node >/dev/null || need_apt+=(nodejs)         # independent protocol servers (tests)
command -v npm >/dev/null || need_apt+=(npm)
command -v chromium >/dev/null || need_apt+=(chromium)  # renders the backtest report (tests)
command -v prometheus >/dev/null || need_apt+=(prometheus)  # scrapes a running flow (tests)
command -v mosquitto_sub >/dev/null || need_apt+=(mosquitto-clients)  # independent subscriber
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
# Independent protocol servers for the interoperability tests (node-opcua, modbus-serial),
# pinned by tests/interop/package-lock.json. Install scripts are not needed (TCP only).
interop="$INFRA_HERE/../../tests/interop"
if [[ ! -f "$interop/node_modules/.package-lock.json" || "$interop/package-lock.json" -nt "$interop/node_modules/.package-lock.json" ]]; then
  log "installing the interop servers' npm packages"
  npm ci --prefix "$interop" --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null
else
  log "interop npm packages already installed"
fi
# Real recordings for the operator checks on real data: the La Haute Borne wind farm SCADA
# history (4 turbines, 10 min, 2014-2015) that the openoa package ships in its wheel. Only the
# wheel is downloaded (openoa itself is not installed); the CSV is taken out of it.
data="$STATE_DIR/data"
if [[ ! -f "$data/la-haute-borne-data-2014-2015.csv" ]]; then
  log "fetching the openoa wheel for its real SCADA recording"
  mkdir -p "$data"
  python3 -m pip download -q --no-deps --dest "$data" "openoa==3.2"
  python3 - "$data" <<'PY'
import io, sys, zipfile
from pathlib import Path
data = Path(sys.argv[1])
wheel = zipfile.ZipFile(next(data.glob("openoa-3.2-*.whl")))
inner = zipfile.ZipFile(io.BytesIO(wheel.read("examples/data/la_haute_borne.zip")))
for name in ("la-haute-borne-data-2014-2015.csv", "la-haute-borne_asset_table.csv"):
    (data / name).write_bytes(inner.read(name))
PY
  rm -f "$data"/openoa-3.2-*.whl
else
  log "real SCADA recording already in $data"
fi
log "install done"
