#!/usr/bin/env bash
# CI step (issue 16 item 2): static validation of deploy/ with the real tools, since this
# machine has no container engine or cluster. Fails on any finding:
#   - docker-compose config   (PyPI docker-compose 1.29.2: parses and resolves compose.yaml)
#   - checkov                 (PyPI: Dockerfile + Kubernetes manifests + secrets scan)
#   - promtool check config / check rules / test rules   (Debian `prometheus`)
#   - nginx -t                (Debian `nginx`; upstream host names rendered as 127.0.0.1)
#   - systemd-analyze verify  (the unit; ExecStart pointed at /bin/true, the binary is not installed)
#   - the Grafana dashboard is valid JSON (its metric names: `cargo test --test deploy`)
# Installs what is missing: Debian packages with apt-get (as root), Python tools in venvs
# under target/deploy-tools (reused on the next run; delete the directory to refresh).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
TOOLS=target/deploy-tools
COMPOSE_VERSION=1.29.2
CHECKOV_VERSION=3.3.30

need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
if ((${#need[@]})); then
    if [ "$(id -u)" != 0 ]; then
        echo "deploy-check: please install the Debian packages: ${need[*]}" >&2
        exit 1
    fi
    echo "deploy-check: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Each venv is complete once its stamp file exists (an interrupted install is redone).
venv() { # dir stamp install-command...
    local dir=$1 stamp=$2
    shift 2
    if [ ! -e "$dir/$stamp" ]; then
        echo "deploy-check: installing $stamp into $dir"
        rm -rf "$dir"
        python3 -m venv "$dir"
        "$@"
        touch "$dir/$stamp"
    fi
}
# docker-compose 1.29.2 pins PyYAML 5.x, whose sdist does not build with Cython 3: build it
# against Cython < 3 first (checkov needs PyYAML 6, hence a venv each).
install_compose() {
    local pip="$TOOLS/compose/bin/pip"
    "$pip" install -q 'cython<3' wheel setuptools
    "$pip" install -q --no-build-isolation 'PyYAML==5.4.1'
    "$pip" install -q "docker-compose==$COMPOSE_VERSION"
}
venv "$TOOLS/compose" "stamp-$COMPOSE_VERSION" install_compose
venv "$TOOLS/checkov" "stamp-$CHECKOV_VERSION" \
    "$TOOLS/checkov/bin/pip" install -q "checkov==$CHECKOV_VERSION"

step() { echo "== deploy-check: $*"; }

step "docker-compose config (deploy/compose.yaml)"
# Placeholder secrets: the file refuses to resolve without them, as it should.
FLASHSALE_ADMIN_TOKEN=check POSTGRES_PASSWORD=check \
    "$TOOLS/compose/bin/docker-compose" -f deploy/compose.yaml config -q
# And without them it must refuse (no default secret slipped in).
if env -u FLASHSALE_ADMIN_TOKEN -u POSTGRES_PASSWORD \
    "$TOOLS/compose/bin/docker-compose" -f deploy/compose.yaml config -q 2>/dev/null; then
    echo "deploy-check: compose.yaml resolved without FLASHSALE_ADMIN_TOKEN/POSTGRES_PASSWORD" >&2
    exit 1
fi

step "checkov (Dockerfile, Kubernetes manifests, secrets)"
# Skipped checks are justified where they are skipped: checkov.io/skip annotations in
# deploy/k8s/deployment.yaml. --skip-download: no call to the vendor's API (offline CI).
"$TOOLS/checkov/bin/checkov" -d deploy --framework dockerfile kubernetes secrets \
    --skip-download --compact --quiet

step "promtool check config / rules, test rules"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml

step "nginx -t (deploy/nginx/nginx.conf)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The compose service names do not resolve here: the same file with loopback upstreams.
sed -e 's/flashsale-[0-9]:8080/127.0.0.1:8080/' \
    -e "s#/var/cache/nginx/flashsale#$work/cache#" deploy/nginx/nginx.conf >"$work/nginx.conf"
nginx -t -q -p "$work" -c "$work/nginx.conf" -g "pid $work/nginx.pid; error_log stderr;"

step "systemd-analyze verify (deploy/systemd/flashsale.service)"
sed 's#^ExecStart=.*#ExecStart=/bin/true#' deploy/systemd/flashsale.service >"$work/flashsale.service"
findings=$(systemd-analyze verify "$work/flashsale.service" 2>&1 || echo "systemd-analyze exited non-zero")
[ -z "$findings" ] || { echo "$findings" >&2; exit 1; }

step "Grafana dashboard JSON"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["panels"], "no panels"' \
    deploy/grafana/flashsale.json

echo "deploy-check: passed in $((SECONDS - started)) s"
