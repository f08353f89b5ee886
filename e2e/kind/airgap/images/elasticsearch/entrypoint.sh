#!/bin/bash
# Elasticsearch 7.10 (OSS jars, elasticsearch-cluster-runner) with the official image's
# interface, as far as the chatmesh operator uses it: every environment variable with a dot in
# its name is a setting (xpack.* are skipped: the OSS build has no X-Pack, so nothing to turn
# off), ES_JAVA_OPTS the JVM's options; one node on 0.0.0.0:9200, data in
# /usr/share/elasticsearch/data. After start, an index template sets 0 replicas (one node).
set -euo pipefail
ES=/usr/share/elasticsearch
CONF="${ES_CONF_DIR:-/tmp/es-config}"
mkdir -p "$CONF"
{
  echo "cluster.name: chatmesh"
  echo "network.host: 0.0.0.0"
  echo "cluster.routing.allocation.disk.threshold_enabled: false"
  while IFS='=' read -r -d '' name value; do
    [[ "$name" == *.* && "$name" != xpack.* ]] || continue
    echo "$name: $value"
  done < <(env -0)
} >"$CONF/elasticsearch.yml"
grep -q '^discovery.type:' "$CONF/elasticsearch.yml" || echo "discovery.type: single-node" >>"$CONF/elasticsearch.yml"
(
  for _ in $(seq 300); do
    if curl -sf 'http://127.0.0.1:9200/_cluster/health?wait_for_status=yellow&timeout=1s' >/dev/null; then
      curl -sf -XPUT -H 'Content-Type: application/json' http://127.0.0.1:9200/_template/chatmesh-no-replicas \
        -d '{"index_patterns":["*"],"order":-1,"settings":{"number_of_replicas":0}}' >/dev/null && exit 0
    fi
    sleep 1
  done
) &
read -r -a java_opts <<<"${ES_JAVA_OPTS:--Xms512m -Xmx512m}"
# The -D flags are the JVM options ES 7.10's own jvm.options sets (as e2e/infra/elasticsearch.sh).
# The runner puts node N's HTTP port at base + N.
exec java "${java_opts[@]}" -Dfile.encoding=UTF-8 -Djava.locale.providers=SPI,COMPAT \
  -Dio.netty.noUnsafe=true -Dio.netty.noKeySetOptimization=true -Dio.netty.recycler.maxCapacityPerThread=0 \
  -Dlog4j.shutdownHookEnabled=false -Dlog4j2.disable.jmx=true -Djava.io.tmpdir=/tmp \
  -cp "$ES/lib/*" org.codelibs.elasticsearch.runner.ElasticsearchClusterRunner \
  -basePath "$ES/data" -confPath "$CONF" -numOfNode 1 -baseHttpPort 9199 -clusterName chatmesh
