#!/usr/bin/env bash
# Start a throw-away single-node Elasticsearch 7.10.2 (OSS modules, no
# security) on 127.0.0.1:9200, without Docker: the real server jars come from
# Maven Central through org.codelibs:elasticsearch-cluster-runner (see
# es-runner/pom.xml) and run in one JVM. Idempotent: a no-op when 9200
# already reports a yellow or green cluster.
set -euo pipefail
INFRA_NAME=elasticsearch
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT=9200
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="$INFRA_DIR/elasticsearch"
LOG="$DIR/elasticsearch.log"
URL="http://127.0.0.1:$PORT"

healthy() { curl -sf "$URL/_cluster/health?wait_for_status=yellow&timeout=1s" >/dev/null; }

if healthy; then
  log "already up on 127.0.0.1:$PORT"
  echo "export CHATMESH_TEST_ES_URL=$URL"
  exit 0
fi
port_open 127.0.0.1 "$PORT" && die "port $PORT is taken by something that is not a healthy Elasticsearch"

command -v java >/dev/null || apt_install openjdk-17-jre-headless
command -v mvn >/dev/null || apt_install maven
command -v curl >/dev/null || apt_install curl
mkdir -p "$DIR/conf"

# Resolve the classpath once per pom version (jars stay in ~/.m2); reruns
# then skip Maven entirely. Re-resolve if ~/.m2 lost any jar.
CP_FILE="$DIR/classpath-$(sha1sum "$HERE/es-runner/pom.xml" | cut -c1-12).txt"
cp_complete() {
  local jar jars
  [[ -s "$CP_FILE" ]] || return 1
  IFS=: read -r -a jars <"$CP_FILE" || true # the file has no final newline
  for jar in "${jars[@]}"; do [[ -f "$jar" ]] || return 1; done
}
if ! cp_complete; then
  log "resolving Elasticsearch jars with Maven (log: $DIR/maven.log)"
  mvn -B -f "$HERE/es-runner/pom.xml" dependency:build-classpath \
    -Dmdep.outputFile="$CP_FILE" </dev/null >"$DIR/maven.log" 2>&1 ||
    die "mvn dependency:build-classpath failed" "$DIR/maven.log"
fi

cp "$HERE/es-runner/elasticsearch.yml" "$DIR/conf/elasticsearch.yml"
log "starting Elasticsearch (log: $LOG)"
# The runner calls Node directly, not ES's Bootstrap, so neither the
# refuse-to-run-as-root check nor the bootstrap checks (vm.max_map_count,
# heap, file descriptors) apply. The -D flags are the JVM options ES 7.10's
# own jvm.options sets. The runner puts node N's HTTP port at base + N.
start_bg "$LOG" java -Xms"${CHATMESH_ES_HEAP:-512m}" -Xmx"${CHATMESH_ES_HEAP:-512m}" \
  -Dfile.encoding=UTF-8 -Djava.locale.providers=SPI,COMPAT \
  -Dio.netty.noUnsafe=true -Dio.netty.noKeySetOptimization=true \
  -Dio.netty.recycler.maxCapacityPerThread=0 \
  -Dlog4j.shutdownHookEnabled=false -Dlog4j2.disable.jmx=true \
  -cp "$(cat "$CP_FILE")" org.codelibs.elasticsearch.runner.ElasticsearchClusterRunner \
  -basePath "$DIR/home" -confPath "$DIR/conf" -numOfNode 1 \
  -baseHttpPort $((PORT - 1)) -clusterName chatmesh-test
wait_up 180 healthy || die "Elasticsearch did not become healthy within 180 s" "$LOG"

# One node cannot host replicas: without this every index stays yellow.
curl -sf -XPUT -H 'Content-Type: application/json' "$URL/_template/chatmesh-no-replicas" \
  -d '{"index_patterns":["*"],"order":-1,"settings":{"number_of_replicas":0}}' \
  >/dev/null || die "could not install the no-replicas index template" "$LOG"

echo "export CHATMESH_TEST_ES_URL=$URL"
