#!/usr/bin/env bash
# The Python packages the GPU machine lacks for `benchmarks/gpu_run.sh` (snakemake on the default
# study: train, summarize, track into MLflow's SQLite store, figures, the report), as wheels in .whl/,
# with the real CIFAR-10 beside them (.whl/cifar10-jpeg.tgz: ../shared does not travel there).
#
#   bash benchmarks/gpu_wheels.sh          # here, in the checkout the device calls send, with network
#
# The GPU image (Python 3.12, torch 2.11, pandas, scipy, statsmodels, matplotlib, jinja2, filelock,
# psutil, pyyaml, requests, pydantic's neighbours anyio/click/h11 ...) has no registry access and lacks
# snakemake, mlflow, jsonschema, kornia, torchinfo and weasyprint; they and their dependencies the
# image lacks are pinned below (this project's pins where it has them, else the versions its
# environment resolves to). Left out on purpose:
#   mlflow (11.7 MiB, the server and UI) and mlflow-tracing: mlflow-skinny holds the client and the
#     SQLAlchemy tracking store, which needs sqlalchemy, alembic, mako (below)
#   pulp (16 MiB, the ILP scheduler's solver): profiles/default sets `scheduler: greedy`
#   google-auth, pyasn1* (databricks-sdk's): only for Databricks-hosted tracking
#   weasyprint's system library pango cannot travel: without it gpu_pipeline.py leaves the report out
# .whl/ must stay out of git: this script adds /.whl/ to the checkout's info/exclude (the user's
# own ignore list, `git rev-parse --git-path info/exclude`), so the device call sends it only
# through `carry: [".whl"]`. Fails when .whl/ exceeds LIMIT_MIB (56) or, with the working tree
# that travels too, 62 MiB of the device's 64.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${DEST:-.whl}
LIMIT_MIB=${LIMIT_MIB:-56}
CIFAR=${CIFAR:-../shared/data/cifar10-jpeg.tgz}
PY=${PY:-python3}

WHEELS=(
    # the workflow engine
    snakemake==9.27.1
    snakemake-interface-common==1.23.0 snakemake-interface-executor-plugins==9.4.0
    snakemake-interface-logger-plugins==2.1.0 snakemake-interface-report-plugins==1.3.0
    snakemake-interface-scheduler-plugins==2.0.2 snakemake-interface-storage-plugins==4.4.1
    argparse-dataclass==2.0.0 conda-inject==1.3.2 configargparse==1.10.2 docutils==0.22.4 dpath==2.2.0
    humanfriendly==10.0 immutables==0.21 nbformat==5.11.1 fastjsonschema==2.22.3 jupyter-core==5.9.1
    platformdirs==4.14.9 traitlets==5.16.1 smart-open==7.7.1 sqlmodel==0.0.37 tenacity==9.2.1
    throttler==1.2.3 yte==1.9.4
    # MLflow's client and SQLite store
    mlflow-skinny==3.17.2 sqlalchemy==2.0.59 greenlet==3.5.6 alembic==1.20.1 mako==1.4.3
    cryptography==50.0.2  # the SQL store's model-registry tables import it (it needs cffi, below)
    cachetools==7.3.3 fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 gitpython==3.2.1 gitdb==4.0.12
    smmap==5.0.3 importlib-metadata==9.1.0 opentelemetry-api==1.45.2 opentelemetry-proto==1.45.2
    opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2 python-dotenv==1.2.4
    sqlparse==0.6.1 databricks-sdk==0.167.0  # mlflow looks up databricks.agents at import
    # shared by both (and by sqlmodel)
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
    # the study's schema checks, augmentations, model summaries
    jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
    kornia==0.9.0 kornia-rs==0.2.0 torchinfo==1.8.0
    # the PDF report, where the machine has pango (it renders nothing without)
    weasyprint==70.0 pydyf==0.13.0 cffi==2.1.1 pycparser==3.12 cssselect2==0.10.1 tinycss2==1.5.1
    tinyhtml5==2.1.0 webencodings==0.6.1 pyphen==0.18.1
)
SDISTS=(connection-pool==0.0.3)  # snakemake's; only an sdist on PyPI: built here (pure Python)

mkdir -p "$DEST"
if exclude=$(git rev-parse --git-path info/exclude 2>/dev/null); then
    mkdir -p "$(dirname "$exclude")"
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo /.whl/ >>"$exclude"
fi
platforms=()
for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do
    platforms+=(--platform "${p}_x86_64")
done
echo "downloading ${#WHEELS[@]} wheels into $DEST/"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$DEST" "${WHEELS[@]}"
for s in "${SDISTS[@]}"; do
    name=${s%%==*}
    ls "$DEST"/"${name//-/_}"-"${s##*==}"-py3-none-any.whl >/dev/null 2>&1 ||
        "$PY" -m pip wheel -q --no-deps --no-binary=:all: -w "$DEST" "$s"
done
# one version of each: a wheel left from another pin list stops the whole install there
stale=$(ls "$DEST"/*.whl | sed -E 's|.*/||; s|-[0-9].*||' | tr 'A-Z-' 'a-z_' | sort | uniq -d)
[[ -z $stale ]] || { echo "error: several versions in $DEST of: $stale (remove $DEST and rerun)" >&2; exit 1; }
for w in "$DEST"/*.whl; do
    case $w in
    *py3-none-any.whl | *py2.py3-none-any.whl | *cp312*manylinux*x86_64.whl | *abi3*manylinux*x86_64.whl) ;;
    *) echo "error: $w is not for CPython 3.12 on x86-64 Linux" >&2; exit 1 ;;
    esac
done
if [[ -f $CIFAR ]]; then
    cmp -s "$CIFAR" "$DEST/cifar10-jpeg.tgz" || cp "$CIFAR" "$DEST/cifar10-jpeg.tgz"
else
    echo "warning: $CIFAR not found: gpu_run.sh then needs CIFAR= pointing at a copy that travels" >&2
fi

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
wheels=$(cat "$DEST"/*.whl | wc -c)
total=$(du -cb "$DEST" | tail -1 | cut -f1)
tree=0
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then  # tracked + untracked-not-ignored files travel too
    tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
fi
echo "$(ls "$DEST"/*.whl | wc -l) wheels: $(mib "$wheels") MiB; $DEST/ in all: $(mib "$total") MiB" \
    "(limit ${LIMIT_MIB}); working tree: $(mib "$tree") MiB; together: $(mib $((total + tree))) MiB of 64"
if ((total > LIMIT_MIB * 1048576 || total + tree > 62 * 1048576)); then
    echo "error: too large to travel: remove what the run does not need" >&2
    exit 1
fi
