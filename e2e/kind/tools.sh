# shellcheck shell=bash
# shellcheck disable=SC2034 # HELM, KUBECONFORM, KIND, KUBECTL are for the scripts that source this
# The Kubernetes tools of e2e/chart-check.sh and e2e/kind/run.sh (sourced, not run), each built
# from source out of the Go module proxy at a pinned version on first use and cached as
# ${CHATMESH_CACHE:-$HOME/.cache/chatmesh}/bin/<tool>-<version>. Needs e2e/infra/lib.sh's log
# and die. Each need_* function prints nothing and sets a variable to the binary's path.

HELM_VERSION="${CHATMESH_HELM_VERSION:-v4.3.1}"
KUBECONFORM_VERSION="${CHATMESH_KUBECONFORM_VERSION:-v0.8.0}"
KIND_VERSION="${CHATMESH_KIND_VERSION:-v0.33.0}"
# kubectl is built only where none is installed; its version matches e2e/infra/kube.sh's API server.
KUBECTL_VERSION="${CHATMESH_KUBECTL_VERSION:-v1.34.4}"

TOOLS_CACHE="${CHATMESH_CACHE:-$HOME/.cache/chatmesh}"
TOOLS_BIN="$TOOLS_CACHE/bin"

# go_tool NAME VERSION PACKAGE: `go install PACKAGE@VERSION` into $TOOLS_BIN/NAME-VERSION
# (once; concurrent callers wait for the first). Sets TOOL to the binary.
go_tool() {
  local name=$1 version=$2 pkg=$3
  TOOL="$TOOLS_BIN/$name-$version"
  [[ -x "$TOOL" ]] && return 0
  command -v go >/dev/null || die "go is required to build $name $version"
  mkdir -p "$TOOLS_BIN"
  (
    flock -w 1800 9 || die "timed out waiting for another build of $name"
    [[ -x "$TOOL" ]] && exit 0
    local gobin log="$TOOLS_BIN/.build-$name.log"
    gobin="$(mktemp -d "$TOOLS_BIN/.gobin.XXXXXX")"
    log "building $name $version from the Go module proxy (log: $log)"
    local started=$SECONDS
    if ! CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local GOBIN="$gobin" \
      go install -trimpath -ldflags "-s -w" "$pkg@$version" >"$log" 2>&1; then
      rm -rf "$gobin"
      die "go install $pkg@$version failed" "$log"
    fi
    mv "$gobin/$(basename "${pkg%/}")" "$TOOL"
    rm -rf "$gobin"
    log "$name $version built in $((SECONDS - started)) s (cached in $TOOLS_BIN)"
  ) 9>"$TOOLS_BIN/.build-$name.lock" || exit 1
}

need_helm() {
  go_tool helm "$HELM_VERSION" helm.sh/helm/v4/cmd/helm
  HELM="$TOOL"
}

need_kubeconform() {
  go_tool kubeconform "$KUBECONFORM_VERSION" github.com/yannh/kubeconform/cmd/kubeconform
  KUBECONFORM="$TOOL"
}

need_kind() {
  go_tool kind "$KIND_VERSION" sigs.k8s.io/kind
  KIND="$TOOL"
}

# need_kubectl: the kubectl on PATH, else one built from k8s.io/kubectl (a two-line main, as
# kubectl's own, in a throw-away module).
need_kubectl() {
  if KUBECTL="$(command -v kubectl)"; then return 0; fi
  KUBECTL="$TOOLS_BIN/kubectl-$KUBECTL_VERSION"
  [[ -x "$KUBECTL" ]] && return 0
  command -v go >/dev/null || die "kubectl is not installed, and go is required to build it"
  mkdir -p "$TOOLS_BIN"
  (
    flock -w 1800 9 || die "timed out waiting for another build of kubectl"
    [[ -x "$KUBECTL" ]] && exit 0
    local src="$TOOLS_CACHE/build/kubectl-$KUBECTL_VERSION" log="$TOOLS_BIN/.build-kubectl.log"
    # The version kubectl reports (default v0.0.0-master), as e2e/infra/kube.sh sets it.
    local pkg=k8s.io/component-base/version major minor
    major="${KUBECTL_VERSION#v}" && major="${major%%.*}"
    minor="${KUBECTL_VERSION#v*.}" && minor="${minor%%.*}"
    mkdir -p "$src"
    cat >"$src/main.go" <<'EOF'
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
)

func main() { os.Exit(cli.Run(cmd.NewDefaultKubectlCommand())) }
EOF
    printf 'module chatmesh.test/kubectl\n\ngo 1.24.0\n\nrequire (\n\tk8s.io/kubectl v0.%s\n\tk8s.io/component-base v0.%s\n)\n' \
      "${KUBECTL_VERSION#v1.}" "${KUBECTL_VERSION#v1.}" >"$src/go.mod"
    log "building kubectl $KUBECTL_VERSION from the Go module proxy (log: $log)"
    (cd "$src" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local go mod tidy &&
      CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local go build -trimpath -o "$KUBECTL.tmp" \
        -ldflags "-s -w -X $pkg.gitVersion=$KUBECTL_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor" .) \
      >"$log" 2>&1 || die "building kubectl failed" "$log"
    mv "$KUBECTL.tmp" "$KUBECTL"
  ) 9>"$TOOLS_BIN/.build-kubectl.lock" || exit 1
}
