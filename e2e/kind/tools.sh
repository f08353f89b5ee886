# shellcheck shell=bash
# shellcheck disable=SC2034 # HELM, KUBECONFORM, KIND, KUBECTL are for the scripts that source this
# The Kubernetes tools of e2e/chart-check.sh and e2e/kind/run.sh (sourced, not run), each built
# from source out of the Go module proxy at a pinned version on first use and cached as
# ${CHATMESH_CACHE:-$HOME/.cache/chatmesh}/bin/<tool>-<version>. Needs e2e/infra/lib.sh's log
# and die. Each need_* function prints nothing and sets a variable to the binary's path.

HELM_VERSION="${CHATMESH_HELM_VERSION:-v4.3.1}"
KUBECONFORM_VERSION="${CHATMESH_KUBECONFORM_VERSION:-v0.8.0}"
KIND_VERSION="${CHATMESH_KIND_VERSION:-v0.33.0}"
# kubectl matches the kind cluster's Kubernetes (e2e/kind/airgap/build.sh) and e2e/infra/kube.sh's API server.
KUBECTL_VERSION="${CHATMESH_KUBECTL_VERSION:-${CHATMESH_AIRGAP_K8S_VERSION:-v1.34.4}}"

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

# kube_go_build DIR VERSION CMD...: Kubernetes commands (kubectl, kubelet, ...) built from
# k8s.io/kubernetes@VERSION out of the Go module proxy into DIR/out, as e2e/infra/kube.sh builds
# kube-apiserver: a wrapper module in DIR requiring k8s.io/kubernetes, its staging modules
# (replaced with ./staging/... in its own go.mod) pointed at their published v0.X.Y. The
# version is stamped as the release build stamps it (kubeadm picks image tags from it; kubectl
# and the servers report it). Shares the Go caches with e2e/infra/kube.sh.
kube_go_build() {
  local src=$1 version=$2 gomod staging pkg=k8s.io/component-base/version major minor cmd pkgs=()
  shift 2
  mkdir -p "$src/out"
  gomod="$(cd "$src" && go mod download -json "k8s.io/kubernetes@$version" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  [[ -f "$gomod" ]] || die "could not download k8s.io/kubernetes@$version's go.mod"
  staging="v0.${version#v1.}"
  {
    printf 'module chatmesh.test/kubernetes\n\ngo 1.24.0\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$version"
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 '"$staging"'#p' "$gomod"
    echo ")"
  } >"$src/go.mod"
  major="${version#v}" && major="${major%%.*}"
  minor="${version#v*.}" && minor="${minor%%.*}"
  for cmd in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$cmd"); done
  (cd "$src" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local nice -n 10 go build -mod=mod -trimpath \
    -ldflags "-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean" \
    -o out/ "${pkgs[@]}")
}

# need_kubectl: kubectl $KUBECTL_VERSION, the version of the kind cluster's Kubernetes
# (e2e/kind/airgap/build.sh), built from k8s.io/kubernetes like the other Kubernetes binaries
# (the air-gapped build's own kubectl when it is there), cached in $TOOLS_BIN. A kubectl on
# PATH is not used: it may be outside the version skew kubectl supports (one minor version).
need_kubectl() {
  KUBECTL="$TOOLS_BIN/kubectl-$KUBECTL_VERSION"
  [[ -x "$KUBECTL" ]] && return 0
  command -v go >/dev/null || die "go is required to build kubectl $KUBECTL_VERSION"
  mkdir -p "$TOOLS_BIN"
  (
    flock -w 1800 9 || die "timed out waiting for another build of kubectl"
    [[ -x "$KUBECTL" ]] && exit 0
    local airgap="$TOOLS_CACHE/airgap/build/kubernetes-$KUBECTL_VERSION/out/kubectl"
    if [[ -x "$airgap" ]]; then
      cp "$airgap" "$KUBECTL.tmp"
    else
      local src="$TOOLS_CACHE/build/kubectl-$KUBECTL_VERSION" log="$TOOLS_BIN/.build-kubectl.log" started=$SECONDS
      log "building kubectl $KUBECTL_VERSION from k8s.io/kubernetes (log: $log)"
      kube_go_build "$src" "$KUBECTL_VERSION" kubectl >"$log" 2>&1 || die "building kubectl failed" "$log"
      mv "$src/out/kubectl" "$KUBECTL.tmp"
      log "kubectl $KUBECTL_VERSION built in $((SECONDS - started)) s"
    fi
    mv "$KUBECTL.tmp" "$KUBECTL"
  ) 9>"$TOOLS_BIN/.build-kubectl.lock" || exit 1
}
