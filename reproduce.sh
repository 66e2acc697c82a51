#!/usr/bin/env bash
# Set up the environment and run the pipeline.
#   ./reproduce.sh quick          the whole DAG on Fashion-MNIST on a CPU (= run quick)
#   ./reproduce.sh paper          dvc repro with the committed params.yaml (the paper's CIFAR-10 setup)
#   ./reproduce.sh test           the test suite
#   ./reproduce.sh run PROFILE    the whole DAG as `dvc exp run -S profile=PROFILE` (conf/profile/PROFILE.yaml
#                                 over conf/config.yaml; fashion: the Fashion-MNIST study, about 70 minutes on a CPU)
# Environment: VENV (default .venv), WANDB_MODE (default offline), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")"

export DVC_NO_ANALYTICS=1
export WANDB_MODE="${WANDB_MODE:-offline}"
export WANDB_SILENT="${WANDB_SILENT:-true}"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
FASHION_DIR=/usr/share/datasets/fashion-mnist

die() { echo "reproduce.sh: $*" >&2; exit 2; }

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "==> creating $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    echo "==> installing absld-repro into $VENV (pinned by constraints.txt)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
    # torchattacks pins an old requests; it needs only torch, scipy and numpy (second AA backend)
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps torchattacks==3.5.1
    export PATH="$PWD/$VENV/bin:$PATH"
    if [ ! -d .dvc ]; then dvc init -q; fi
}

fashion_mnist() {
    if [ -f "$FASHION_DIR/train-images-idx3-ubyte.gz" ]; then return; fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "==> installing Debian package dataset-fashion-mnist"
        apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
            || die "could not install dataset-fashion-mnist; install it (sudo apt-get install dataset-fashion-mnist) or set data.source_dir in conf/profile/quick.yaml"
    else
        die "Fashion-MNIST is not in $FASHION_DIR: run 'sudo apt-get install dataset-fashion-mnist', or point data.source_dir in conf/profile/quick.yaml at the idx files"
    fi
}

profiles() { (cd conf/profile && ls *.yaml | sed 's/\.yaml$//' | tr '\n' ' '); }

run_profile() {
    [ -f "conf/profile/$1.yaml" ] || die "no profile conf/profile/$1.yaml; choose one of: $(profiles)"
    echo "==> dvc exp run -S profile=$1 (DVC composes params.yaml from conf/config.yaml and conf/profile/$1.yaml)"
    dvc exp run -S "profile=$1"
}

cmd="${1:-}"
case "$cmd" in
    quick)
        setup; fashion_mnist; run_profile quick ;;
    run)
        [ $# -ge 2 ] || die "usage: ./reproduce.sh run PROFILE"
        [ -f "conf/profile/$2.yaml" ] || die "no profile conf/profile/$2.yaml; choose one of: $(profiles)"
        setup
        if grep -q "dataset: fashion-mnist" "conf/profile/$2.yaml"; then fashion_mnist; fi
        run_profile "$2" ;;
    paper)
        setup
        if ! git diff --quiet -- params.yaml 2>/dev/null; then
            die "params.yaml differs from the committed paper configuration (a profile run leaves its composition there); run 'git checkout params.yaml' (or 'dvc exp run -S profile=paper') first, or use 'dvc repro' to run the workspace params as they are"
        fi
        dvc repro ;;
    test)
        setup
        shift
        python -m pytest -q "$@" ;;
    *)
        die "usage: ./reproduce.sh quick | paper | test [pytest args] | run PROFILE" ;;
esac
