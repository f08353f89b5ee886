#!/usr/bin/env bash
# Checks of the Helm chart (charts/chatmesh-operator), the example ChatSystems
# (e2e/examples) and the kind scripts (e2e/kind), without a cluster:
#   - shellcheck of e2e/kind/*.sh and this script;
#   - the chart's crds/ is the generated crds/ (Helm installs the chart's copy);
#   - helm lint --strict, with the default values and with ci/full-values.yaml (every option);
#   - helm template with default, full and minimal values, and every rendered object plus the
#     example ChatSystems validated against the real Kubernetes 1.34 schemas (kubeconform,
#     strict: unknown fields fail) and the ChatSystem CRD's schema; the ServiceMonitor against
#     prometheus-operator's Go types (strict decoding);
#   - values.schema.json refuses misspelt keys and wrong types (helm template must fail);
#   - the Grafana dashboards and PrometheusRule alerts: JSON parses, every PromQL expression
#     parses (Prometheus's own parser, built from the Go module proxy).
# With a test API server (CHATMESH_TEST_KUBECONFIG, from `eval "$(bash e2e/infra/up.sh kube)"`)
# it also installs, upgrades and uninstalls the chart there, dry-runs the examples server-side
# (the CRD's CEL rules), and, given CHATMESH_OPERATOR_BIN (a built chatmesh-operator), runs the
# operator under the chart's ServiceAccount and RBAC through a ChatSystem's whole life: every
# permission the operator uses is then proven sufficient (a forbidden call fails the check).
#
# Tools are built from the Go module proxy at pinned versions and cached, with the schemas, in
# ${CHATMESH_CACHE:-$HOME/.cache/chatmesh} (cold: ~5 min, mostly building Helm; warm: ~5 s, ~15 s with
# the API server stages).
# Diagnostics go to stderr; the exit status is non-zero on the first failure.
set -euo pipefail
INFRA_NAME=chart-check
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=infra/lib.sh
source "$ROOT/e2e/infra/lib.sh"
# shellcheck source-path=SCRIPTDIR source=kind/tools.sh
source "$ROOT/e2e/kind/tools.sh"
cd "$ROOT"

CHART=charts/chatmesh-operator
CRD=crds/chatmesh.io_chatsystems.yaml
# The Kubernetes version validated against: the operator's k8s-openapi feature (v1_34) and
# e2e/infra/kube.sh's API server.
KUBE_SCHEMA_VERSION=1.34.0
KUBERNETES_VALIDATE_VERSION=1.37.0 # PyPI package shipping the schemas, 1.25 to 1.37
PROMETHEUS_OPERATOR_VERSION=v0.95.2
# Go module version of Prometheus 3.7.3 (its PromQL parser).
PROMETHEUS_VERSION=v0.307.3

CACHE="$TOOLS_CACHE/chart-check"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$CACHE"
started=$SECONDS
passed=0
ok() {
  passed=$((passed + 1))
  log "ok: $*"
}

# ---- tools ---------------------------------------------------------------------------------
command -v shellcheck >/dev/null || apt_install shellcheck
need_helm
need_kubeconform

# The schemas of kubernetes-validate (PyPI), made usable by kubeconform: their $refs point at
# "/api/_definitions.json" under a https://kubernetes.io $id; here they point at the file
# beside them. Also gives the Python (with PyYAML) that converts the CRD's schema below.
VENV="$CACHE/venv-kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
SCHEMAS="$CACHE/schemas-$KUBERNETES_VALIDATE_VERSION/v$KUBE_SCHEMA_VERSION-strict"
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import kubernetes_validate, yaml' 2>/dev/null; then
  log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $VENV"
  python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2 || die "python3 -m venv $VENV failed"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2 || die "pip install kubernetes-validate failed"
fi
PY="$VENV/bin/python"
if [[ ! -s "$SCHEMAS/deployment-apps-v1.json" ]]; then
  log "preparing the Kubernetes $KUBE_SCHEMA_VERSION JSON schemas in $SCHEMAS"
  rm -rf "$SCHEMAS.tmp" && mkdir -p "$SCHEMAS.tmp"
  "$PY" - "$KUBE_SCHEMA_VERSION" "$SCHEMAS.tmp" <<'EOF' || die "converting the schemas failed"
import json, os, sys
import kubernetes_validate
version, out = sys.argv[1], sys.argv[2]
src = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema",
                   f"v{version}-local-strict")
def fix(node):
    if isinstance(node, dict):
        node.pop("$id", None)
        for key, child in node.items():
            if key == "$ref" and isinstance(child, str) and child.startswith("/api/_definitions.json#"):
                node[key] = child[len("/api/"):]
            else:
                fix(child)
    elif isinstance(node, list):
        for child in node:
            fix(child)
for name in os.listdir(src):
    with open(os.path.join(src, name)) as f:
        schema = json.load(f)
    fix(schema)
    with open(os.path.join(out, name), "w") as f:
        json.dump(schema, f)
EOF
  rm -rf "$SCHEMAS" && mv "$SCHEMAS.tmp" "$SCHEMAS"
fi

# prometheus-operator's ServiceMonitor type, strictly decoding (its CRD's schema is not served
# by any registry this project uses; the Go types are the source it is generated from).
SMCHECK="$TOOLS_BIN/servicemonitor-check-$PROMETHEUS_OPERATOR_VERSION"
if [[ ! -x "$SMCHECK" ]]; then
  src="$TOOLS_CACHE/build/servicemonitor-check-$PROMETHEUS_OPERATOR_VERSION"
  mkdir -p "$src" "$TOOLS_BIN"
  cat >"$src/main.go" <<'EOF'
// Strictly decodes every ServiceMonitor in a multi-document YAML stream (stdin) into
// prometheus-operator's own Go type: an unknown or misspelt field, or a wrong type, fails.
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	sigyaml "sigs.k8s.io/yaml"
)

func main() {
	reader := yaml.NewYAMLReader(bufio.NewReader(os.Stdin))
	found, failed := 0, 0
	for {
		doc, err := reader.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "reading YAML:", err)
			os.Exit(2)
		}
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := sigyaml.Unmarshal(doc, &meta); err != nil || meta.Kind != "ServiceMonitor" {
			continue
		}
		found++
		var sm monitoringv1.ServiceMonitor
		if meta.APIVersion != "monitoring.coreos.com/v1" {
			fmt.Fprintf(os.Stderr, "ServiceMonitor: apiVersion %q, want monitoring.coreos.com/v1\n", meta.APIVersion)
			failed++
		} else if err := sigyaml.UnmarshalStrict(bytes.TrimSpace(doc), &sm); err != nil {
			fmt.Fprintf(os.Stderr, "ServiceMonitor %s: %v\n", sm.Name, err)
			failed++
		} else if len(sm.Spec.Endpoints) == 0 {
			fmt.Fprintf(os.Stderr, "ServiceMonitor %s: no endpoints\n", sm.Name)
			failed++
		}
	}
	fmt.Fprintf(os.Stderr, "ServiceMonitors: %d checked, %d invalid\n", found, failed)
	if failed > 0 || found == 0 {
		os.Exit(1)
	}
}
EOF
  printf 'module chatmesh.test/servicemonitor-check\n\ngo 1.24.0\n\nrequire github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring %s\n' \
    "$PROMETHEUS_OPERATOR_VERSION" >"$src/go.mod"
  log "building the ServiceMonitor check ($PROMETHEUS_OPERATOR_VERSION) from the Go module proxy"
  (cd "$src" && export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local &&
    go mod tidy && go build -trimpath -ldflags "-s -w" -o "$SMCHECK.tmp" .) >"$src/build.log" 2>&1 ||
    die "building the ServiceMonitor check failed" "$src/build.log"
  mv "$SMCHECK.tmp" "$SMCHECK"
fi

# Prometheus's own PromQL parser (the promql/parser package of github.com/prometheus/prometheus;
# only the packages it imports are built: ~30 s cold here), for the dashboards' and alerts'
# expressions.
PROMQLCHECK="$TOOLS_BIN/promql-check-$PROMETHEUS_VERSION"
if [[ ! -x "$PROMQLCHECK" ]]; then
  src="$TOOLS_CACHE/build/promql-check-$PROMETHEUS_VERSION"
  mkdir -p "$src" "$TOOLS_BIN"
  cat >"$src/main.go" <<'EOF'
// Parses every PromQL expression given on stdin, one per NUL-separated record.
package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"

	"github.com/prometheus/prometheus/promql/parser"
)

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	in.Split(func(data []byte, atEOF bool) (int, []byte, error) {
		if i := bytes.IndexByte(data, 0); i >= 0 {
			return i + 1, data[:i], nil
		}
		if atEOF && len(data) > 0 {
			return len(data), data, nil
		}
		return 0, nil, nil
	})
	n, bad := 0, 0
	for in.Scan() {
		expr := string(in.Bytes())
		n++
		if _, err := parser.ParseExpr(expr); err != nil {
			bad++
			fmt.Fprintf(os.Stderr, "%v\n  in: %s\n", err, expr)
		}
	}
	fmt.Fprintf(os.Stderr, "PromQL: %d parsed, %d invalid\n", n, bad)
	if bad > 0 || n == 0 {
		os.Exit(1)
	}
}
EOF
  printf 'module chatmesh.test/promql-check\n\ngo 1.24.0\n\nrequire github.com/prometheus/prometheus %s\n' \
    "$PROMETHEUS_VERSION" >"$src/go.mod"
  log "building the PromQL check ($PROMETHEUS_VERSION) from the Go module proxy"
  (cd "$src" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local go mod tidy &&
    CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local go build -trimpath -ldflags "-s -w" \
      -o "$PROMQLCHECK.tmp" .) >"$src/build.log" 2>&1 ||
    die "building the PromQL check failed" "$src/build.log"
  mv "$PROMQLCHECK.tmp" "$PROMQLCHECK"
fi
log "tools ready in $((SECONDS - started)) s"

# ---- static checks -------------------------------------------------------------------------
shellcheck -x e2e/chart-check.sh e2e/kind/*.sh || die "shellcheck found problems (above)"
ok "shellcheck e2e/chart-check.sh e2e/kind/*.sh"

cmp -s "$CRD" "$CHART/crds/$(basename "$CRD")" ||
  die "$CHART/crds/ differs from the generated $CRD: cp $CRD $CHART/crds/"
ok "the chart's CRD is the generated one"

"$HELM" lint --strict "$CHART" >"$WORK/lint.log" 2>&1 || die "helm lint --strict failed" "$WORK/lint.log"
"$HELM" lint --strict "$CHART" -f "$CHART/ci/full-values.yaml" >"$WORK/lint.log" 2>&1 ||
  die "helm lint --strict with ci/full-values.yaml failed" "$WORK/lint.log"
ok "helm lint --strict (default and full values)"

# render NAME ARGS...: helm template into $WORK/NAME.yaml (with the CRD).
render() {
  local name=$1
  shift
  "$HELM" template chatmesh "$CHART" --namespace chatmesh-system --include-crds \
    --kube-version "$KUBE_SCHEMA_VERSION" "$@" >"$WORK/$name.yaml" 2>"$WORK/$name.err" ||
    die "helm template ($name values) failed" "$WORK/$name.err"
}
render default
render full -f "$CHART/ci/full-values.yaml"
render minimal --set serviceAccount.create=false --set serviceAccount.name=existing \
  --set rbac.create=false --set metrics.service.enabled=false --set resources=null
kinds() { grep -h '^kind:' "$@" | sort | uniq -c | awk '{printf "%s%s x%s", sep, $3, $1; sep=", "}'; }
for name in default full minimal; do log "rendered $name: $(kinds "$WORK/$name.yaml")"; done
grep -q '^kind: ClusterRole$' "$WORK/default.yaml" || die "default values render no ClusterRole"
grep -q '^kind: Role$' "$WORK/full.yaml" || die "operator.watchNamespace renders no Role"
grep -q '^kind: ServiceMonitor$' "$WORK/full.yaml" || die "metrics.serviceMonitor.enabled renders no ServiceMonitor"
grep -q '^kind: PrometheusRule$' "$WORK/full.yaml" || die "alerts.enabled renders no PrometheusRule"
if grep -q '^kind: PrometheusRule$' "$WORK/default.yaml"; then
  die "the default values render a PrometheusRule (its CRD may be absent)"
fi
# Dashboards: every ConfigMap's JSON parses and has panels with queries; every alert has an
# expression. (e2e/tests/traces.rs checks the metric names against a scrape.)
"$VENV/bin/python" - "$WORK/default.yaml" "$WORK/full.yaml" >"$WORK/monitoring.log" 2>&1 <<'PY' ||
import json, sys, yaml
dashboards = rules = 0
exprs = []
for path in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(path)):
        if not doc:
            continue
        labels = doc.get("metadata", {}).get("labels") or {}
        if doc["kind"] == "ConfigMap" and labels.get("grafana_dashboard") == "1":
            for name, text in doc["data"].items():
                d = json.loads(text)
                queries = [t["expr"] for p in d["panels"] for t in p["targets"]]
                assert d["uid"] and queries and all(queries), f"{name}: a dashboard without queries"
                exprs.extend(queries)
                dashboards += 1
        if doc["kind"] == "PrometheusRule":
            for group in doc["spec"]["groups"]:
                for rule in group["rules"]:
                    assert rule["alert"] and rule["expr"].strip(), rule
                    rules += 1
                    exprs.append(rule["expr"])
assert dashboards >= 2 and rules >= 6, (dashboards, rules)
open(sys.argv[-1] + ".exprs", "w").write("\0".join(exprs))
print(f"{dashboards} dashboards, {rules} alert rules")
PY
  die "dashboards or alert rules are malformed" "$WORK/monitoring.log"
"$PROMQLCHECK" <"$WORK/full.yaml.exprs" 2>>"$WORK/monitoring.log" ||
  die "a dashboard or alert expression is not valid PromQL" "$WORK/monitoring.log"
ok "dashboards and alert rules: $(tr '\n' ' ' <"$WORK/monitoring.log")"
if grep -qE '^kind: (ServiceAccount|ClusterRole|Service)$' "$WORK/minimal.yaml"; then
  die "serviceAccount.create/rbac.create/metrics.service.enabled=false still render those objects"
fi
ok "helm template (default, full and minimal values)"

# The ChatSystem CRD's openAPIV3Schema as a strict JSON schema, named as kubeconform looks it
# up. CEL rules (x-kubernetes-validations) cannot be checked this way: the server-side stage
# below checks them.
CRD_SCHEMAS="$WORK/crd-schemas"
mkdir -p "$CRD_SCHEMAS"
"$PY" - "$CRD" "$CRD_SCHEMAS" <<'EOF' || die "converting the ChatSystem CRD's schema failed"
import json, sys, yaml
crd = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d)
group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
def strict(node):
    if isinstance(node, dict):
        if node.pop("x-kubernetes-int-or-string", False):
            node["type"] = ["integer", "string"]
        if node.pop("nullable", False) and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        preserve = node.pop("x-kubernetes-preserve-unknown-fields", False)
        if "properties" in node and not preserve:
            node.setdefault("additionalProperties", False)
        for key, child in node.items():
            if key == "properties":
                for value in child.values():
                    strict(value)
            elif key not in ("enum", "default", "example"):
                strict(child)
    elif isinstance(node, list):
        for child in node:
            strict(child)
for version in crd["spec"]["versions"]:
    schema = version["schema"]["openAPIV3Schema"]
    strict(schema)
    schema["properties"]["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
    schema["properties"]["kind"] = {"type": "string", "enum": [kind]}
    schema["properties"]["metadata"] = {"type": "object"}
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    name = f"{kind.lower()}-{group.split('.')[0]}-{version['name']}.json"
    with open(f"{sys.argv[2]}/{name}", "w") as f:
        json.dump(schema, f)
EOF

# e2e/kind/run.sh's plan, and the ChatSystem it would apply (the example, patched for kind).
CHATMESH_KIND_CLUSTER=chart-check-dry-run bash e2e/kind/run.sh --dry-run >"$WORK/kind-plan.txt" 2>"$WORK/kind-plan.err" ||
  die "e2e/kind/run.sh --dry-run failed" "$WORK/kind-plan.err"
cp "$TOOLS_CACHE/kind/chart-check-dry-run/chatsystem.yaml" "$WORK/kind-chatsystem.yaml"
grep -q 'kubectl.* -n chat delete chatsystem chat' "$WORK/kind-plan.txt" || die "e2e/kind/run.sh --dry-run printed no full plan" "$WORK/kind-plan.txt"
ok "e2e/kind/run.sh --dry-run ($(grep -c '^  \$' "$WORK/kind-plan.txt") steps printed)"

EXAMPLES=(e2e/examples/*.yaml "$WORK/kind-chatsystem.yaml")
"$KUBECONFORM" -strict -summary -output text \
  -schema-location "$SCHEMAS/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
  -schema-location "$CRD_SCHEMAS/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
  -skip ServiceMonitor,PrometheusRule \
  "$WORK/default.yaml" "$WORK/full.yaml" "$WORK/minimal.yaml" "${EXAMPLES[@]}" \
  >"$WORK/kubeconform.log" 2>&1 || die "kubeconform found invalid objects" "$WORK/kubeconform.log"
log "$(tail -n 1 "$WORK/kubeconform.log")"
"$SMCHECK" <"$WORK/full.yaml" 2>"$WORK/smcheck.log" || die "the ServiceMonitor is invalid" "$WORK/smcheck.log"
ok "rendered objects and ${#EXAMPLES[@]} ChatSystems (examples, kind's) are valid (Kubernetes $KUBE_SCHEMA_VERSION, CRD, ServiceMonitor)"

# A check that can fail must be seen to fail: a misspelt field in an example is refused.
sed 's/^  services:/  servces:/' e2e/examples/chatsystem.yaml >"$WORK/typo-chatsystem.yaml"
if "$KUBECONFORM" -strict -schema-location "$CRD_SCHEMAS/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
  "$WORK/typo-chatsystem.yaml" >/dev/null 2>&1; then
  die "kubeconform accepted a ChatSystem with a misspelt field (spec.servces)"
fi
ok "a misspelt ChatSystem field is refused"

# values.schema.json: each of these must make helm template fail, naming the culprit.
refuse() {
  local what=$1 expect=$2
  shift 2
  if "$HELM" template chatmesh "$CHART" "$@" >/dev/null 2>"$WORK/refuse.err"; then
    die "values.schema.json accepted $what ($*)"
  fi
  grep -q -- "$expect" "$WORK/refuse.err" || die "helm refused $what without naming $expect" "$WORK/refuse.err"
}
refuse "a misspelt key" pullPolcy --set image.pullPolcy=Always
refuse "a misspelt top-level key" nodeSelectr --set nodeSelectr.disk=ssd
refuse "a wrong type" port --set metrics.port=http
refuse "an unknown enum value" logFormat --set operator.logFormat=xml
refuse "a bad duration" resync --set operator.resync=5min
refuse "a ServiceMonitor without the metrics Service" "metrics.service.enabled" \
  --set metrics.serviceMonitor.enabled=true --set metrics.service.enabled=false
ok "values.schema.json refuses misspelt keys, wrong types and bad values"

# ---- against a real API server (e2e/infra/kube.sh) ------------------------------------------
if [[ -z "${CHATMESH_TEST_KUBECONFIG:-}" ]]; then
  log "CHATMESH_TEST_KUBECONFIG is unset: skipping the install and RBAC checks (eval \"\$(bash e2e/infra/up.sh kube)\" first)"
else
  need_kubectl
  export KUBECONFIG="$CHATMESH_TEST_KUBECONFIG"
  k() { "$KUBECTL" --request-timeout=30s "$@"; }
  OP_NS=chart-check-operator
  APP_NS=chart-check-app
  RELEASE=chart-check
  # Left over from an earlier run (this API server has no garbage collector or namespace
  # controller, so nothing is removed for us: namespaces are kept and emptied).
  "$HELM" uninstall "$RELEASE" -n "$OP_NS" --wait=false >/dev/null 2>&1 || true
  for ns in "$OP_NS" "$APP_NS"; do
    k get namespace "$ns" >/dev/null 2>&1 || k create namespace "$ns" >/dev/null
  done
  k -n "$APP_NS" delete chatsystems --all --wait=false >/dev/null 2>&1 || true
  k -n "$APP_NS" delete deploy,sts,job,svc,secret,cm,pvc,ingress,networkpolicy,events.events.k8s.io \
    --all --wait=false >/dev/null 2>&1 || true
  # A claim keeps its pvc-protection finalizer until a controller removes it: none here.
  for pvc in $(k -n "$APP_NS" get pvc -o name 2>/dev/null); do
    k -n "$APP_NS" patch "$pvc" --type=merge -p '{"metadata": {"finalizers": null}}' >/dev/null 2>&1 || true
  done

  # install, with the RBAC scoped to the app namespace: other users of this API server (the
  # operator's own tests) must not see a second operator act on their ChatSystems. The rules
  # are the same list as the default ClusterRole's.
  # The operator's tests apply the CRD too (as field manager chatmesh-tests): one that differs
  # (another checkout's, on a shared test API server) would make Helm's server-side apply
  # conflict. Helm (field manager "helm") takes the fields over first.
  k apply --server-side --force-conflicts --field-manager=helm -f "$CHART/crds/$(basename "$CRD")" >/dev/null ||
    die "applying the chart's CRD failed"
  "$HELM" install "$RELEASE" "$CHART" -n "$OP_NS" --set operator.watchNamespace="$APP_NS" \
    --set image.pullPolicy=Never >"$WORK/install.log" 2>&1 || die "helm install failed" "$WORK/install.log"
  k get crd chatsystems.chatmesh.io >/dev/null || die "helm install left no ChatSystem CRD"
  k -n "$APP_NS" get role "$RELEASE-chatmesh-operator" >/dev/null || die "helm install made no Role"
  ok "helm install into a real kube-apiserver"

  for example in "${EXAMPLES[@]}"; do
    k -n "$APP_NS" apply --dry-run=server -f "$example" >"$WORK/dry-run.log" 2>&1 ||
      die "the API server refuses $example" "$WORK/dry-run.log"
  done
  ok "the API server accepts the example ChatSystems and kind's (CEL rules included)"

  if [[ -n "${CHATMESH_OPERATOR_BIN:-}" && -x "${CHATMESH_OPERATOR_BIN:-}" ]]; then
    # shellcheck source-path=SCRIPTDIR source=kind/rbac-check.sh
    source "$ROOT/e2e/kind/rbac-check.sh"
    rbac_check
    ok "the operator, with only the chart's RBAC, took a ChatSystem through its life"
  else
    log "CHATMESH_OPERATOR_BIN is unset or not executable: skipping the run of the operator under the chart's RBAC"
  fi

  "$HELM" upgrade "$RELEASE" "$CHART" -n "$OP_NS" --reuse-values --set operator.logFormat=text \
    >"$WORK/upgrade.log" 2>&1 || die "helm upgrade failed" "$WORK/upgrade.log"
  "$HELM" uninstall "$RELEASE" -n "$OP_NS" >"$WORK/uninstall.log" 2>&1 || die "helm uninstall failed" "$WORK/uninstall.log"
  k get crd chatsystems.chatmesh.io >/dev/null || die "helm uninstall removed the CRD (it must keep it)"
  ok "helm upgrade and uninstall (the CRD stays)"
fi

log "$passed passed, 0 failed in $((SECONDS - started)) s"
