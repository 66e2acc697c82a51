#!/usr/bin/env bash
# Set up the environment and run the pipeline.
#   ./reproduce.sh quick          the whole DAG on Fashion-MNIST on a CPU (= run quick)
#   ./reproduce.sh paper          dvc repro with the committed params.yaml (the paper's CIFAR-10 setup)
#   ./reproduce.sh test           the test suite, then (without pytest args) the cross-check
#   ./reproduce.sh crosscheck     the tests against torchattacks, in .venv-crosscheck (its wheel pins an
#                                 old requests, so it is kept out of the pipeline's environment)
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

# setup [VENV CONSTRAINTS EXTRAS]: the environment, installed from pinned versions; `pip check` must pass
setup() {
    local venv="${1:-$VENV}" constraints="${2:-constraints.txt}" extras="${3:-test}"
    if [ ! -x "$venv/bin/python" ]; then
        echo "==> creating $venv"
        "$PYTHON" -m venv "$venv"
    fi
    echo "==> installing absld-repro[$extras] into $venv (pinned by $constraints)"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$constraints" -e ".[$extras]"
    "$venv/bin/python" -m pip check >/dev/null || { "$venv/bin/python" -m pip check; die "$venv has broken requirements (above)"; }
    export PATH="$PWD/$venv/bin:$PATH"
    if [ ! -d .dvc ]; then dvc init -q; fi
}

crosscheck() {
    setup .venv-crosscheck constraints-crosscheck.txt test,crosscheck
    echo "==> the cross-check against torchattacks"
    ABSLD_CROSSCHECK=1 .venv-crosscheck/bin/python -m pytest -q -m crosscheck
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
        setup "$VENV" constraints.txt test,slurm   # slurm: the fan-out's Slurm backend is tested too
        shift
        python -m pytest -q "$@"
        if [ $# -eq 0 ]; then crosscheck; fi ;;
    crosscheck)
        crosscheck ;;
    *)
        die "usage: ./reproduce.sh quick | paper | test [pytest args] | crosscheck | run PROFILE" ;;
esac
