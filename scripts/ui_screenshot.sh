#!/usr/bin/env bash
# A screenshot of the MLflow UI as a reviewer opens it (docs/mlflow-report.png, docs/mlflow-charts.png):
#   bash scripts/ui_screenshot.sh STORE_URI URL_PATH OUT.png [PORT]
# e.g. bash scripts/ui_screenshot.sh sqlite:///$PWD/outputs/mlflow.db \
#        '#/experiments/1/runs?viewStateShareKey=morphogen-matrix&compareRunsMode=CHART' docs/mlflow-charts.png
# Starts `mlflow ui` on 127.0.0.1:PORT (default 5077), waits for it, takes the page in headless Chromium (Debian's
# `chromium`: apt-get install -y chromium) after up to 90 s of virtual time (the charts fetch their metric histories
# first), and stops the server. It only reads the store.
set -euo pipefail
store=${1:?store URI}; path=${2:?URL path after the host}; out=${3:?output PNG}; port=${4:-5077}
mlflow ui --backend-store-uri "$store" --host 127.0.0.1 --port "$port" >/tmp/ui_screenshot.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf -o /dev/null "http://127.0.0.1:$port/health" && break; sleep 1; done
timeout 180 chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,1100 \
  --virtual-time-budget=90000 --screenshot="$out" "http://127.0.0.1:$port/$path" 2>/dev/null
echo "wrote $out"
