#!/usr/bin/env bash
# Device check for a machine with an NVIDIA GPU (well under 8 minutes):
#   1. read the GPU, its MIG mode and MIG devices through NVML (read only);
#   2. profile one example model in CUDA on the whole GPU (mps-share mode at size 7: all SMs);
#   3. plan it, serve the plan (the Open Inference Protocol) and load it with real tensors for 20 s;
#   4. read MIG mode and devices again: they must be as they were.
# It never changes MIG mode or creates instances. With MIG mode on, the whole-GPU steps cannot run;
# --allow-mig-changes turns MIG mode off first (and says so), nothing else does.
#
# usage: bench/device_check.sh [--model resnet50] [--gpu-index 0] [--out DIR] [--allow-mig-changes]
# needs: the project installed with '.[serve,profile,nvml]' and a CUDA build of torch.
set -euo pipefail

MODEL=resnet50
GPU=0
OUT=""
ALLOW_MIG=0
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --gpu-index) GPU="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --allow-mig-changes) ALLOW_MIG=1; shift ;;
    *) echo "device_check: unknown argument $1" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python3}"
OUT="${OUT:-$(mktemp -d -t parvagpu-device-XXXXXX)}"
mkdir -p "$OUT"
PORT="${PORT:-8765}"
step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }

read_mig() {  # one JSON line: GPU name, MIG mode (current, pending), MIG devices; read only
  "$PY" - "$GPU" <<'EOF'
import json, sys
import pynvml as n
n.nvmlInit()
h = n.nvmlDeviceGetHandleByIndex(int(sys.argv[1]))
name = n.nvmlDeviceGetName(h)
try:
    cur, pend = n.nvmlDeviceGetMigMode(h)
except n.NVMLError:
    cur = pend = None  # a GPU without MIG
devices = []
if cur:
    for i in range(n.nvmlDeviceGetMaxMigDeviceCount(h)):
        try:
            m = n.nvmlDeviceGetMigDeviceHandleByIndex(h, i)
        except n.NVMLError:
            continue
        devices.append({"uuid": n.nvmlDeviceGetUUID(m), "gi": n.nvmlDeviceGetGpuInstanceId(m),
                        "ci": n.nvmlDeviceGetComputeInstanceId(m)})
print(json.dumps({"name": name if isinstance(name, str) else name.decode(), "mig_mode": cur,
                  "mig_pending": pend, "mig_devices": devices}))
EOF
}

step "1. GPU and MIG state through NVML (read only)"
BEFORE="$(read_mig 2>"$OUT/nvml-error.txt")" || { echo "device_check: no NVIDIA GPU or NVML here ($(tail -1 "$OUT/nvml-error.txt"))" >&2; exit 3; }
echo "$BEFORE" | tee "$OUT/mig-before.json"
if echo "$BEFORE" | grep -q '"mig_mode": 1'; then
  if [ "$ALLOW_MIG" = 1 ]; then
    echo "MIG mode is on; --allow-mig-changes: turning it off (needs root and an idle GPU)"
    nvidia-smi -i "$GPU" -mig 0
    BEFORE="$(read_mig)"
  else
    echo "MIG mode is on: the whole-GPU steps need it off; rerun with --allow-mig-changes to turn it off" >&2
    exit 3
  fi
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "device_check: this torch has no CUDA ($("$PY" -c 'import torch; print(torch.__version__)'))" >&2; exit 3; }
GPU_TYPE="$("$PY" - "$BEFORE" <<'EOF'
import json, sys
name = json.loads(sys.argv[1])["name"]
for key, t in (("H200", "H200"), ("H100", "H100-80GB"), ("A100-SXM4-40GB", "A100-40GB"), ("A100", "A100-80GB"), ("A30", "A30")):
    if key in name:
        print(t)
        break
else:
    print("H100-80GB")  # an unknown GPU is planned as an H100: the check is of serving, not packing
EOF
)"
echo "planning as $GPU_TYPE"

step "2. profile $MODEL in CUDA on the whole GPU"
SHAPE=3,224,224
[ "$MODEL" = inception_v3 ] && SHAPE=3,299,299
CUDA_VISIBLE_DEVICES="$GPU" timeout 240 "$PY" -m parvagpu profile "parvagpu.serving.zoo:$MODEL" --shape "$SHAPE" \
  --name "$MODEL" --mode mps-share --gpu-index 0 --sizes 7 --batches 1,8,32 --procs 1 --duration 2 --warmup 3 \
  --out "$OUT/profiles" -q
cat "$OUT/profiles/$MODEL.csv"

step "3. plan, serve and load (OIP, binary tensors, 20 s)"
read RATE SLO < <("$PY" - "$OUT/profiles/$MODEL.csv" <<'EOF'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if float(r["Latency"]) > 0]
best = max(rows, key=lambda r: float(r["Throughput"]))
print(round(0.5 * float(best["Throughput"]), 1), round(1000 * float(best["Latency"]) / 0.3, 1))
EOF
)
printf 'version: v1\nservices:\n  - {model: %s, rate: %s, latency_ms: %s}\n' "$MODEL" "$RATE" "$SLO" > "$OUT/services.yaml"
printf 'version: v1\nmodels:\n  %s:\n    factory: parvagpu.serving.zoo:%s\n    inputs: [{name: input, datatype: FP32, shape: [%s]}]\n    outputs: [{name: logits, datatype: FP32, shape: [1000]}]\n' \
  "$MODEL" "$MODEL" "$SHAPE" > "$OUT/models.yaml"
"$PY" -m parvagpu plan --profiles "$OUT/profiles" --services "$OUT/services.yaml" --gpu "$GPU_TYPE" --out "$OUT/plan.json"
CUDA_VISIBLE_DEVICES="$GPU" "$PY" -m parvagpu serve "$OUT/plan.json" --models "$OUT/models.yaml" --port "$PORT" > "$OUT/serve.log" 2>&1 &
SERVE=$!
trap 'kill -INT $SERVE 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/v2/health/ready" > /dev/null && break
  kill -0 "$SERVE" 2>/dev/null || { tail -20 "$OUT/serve.log"; echo "device_check: serve exited" >&2; exit 4; }
  sleep 1
done
curl -sf "http://127.0.0.1:$PORT/v2/models/$MODEL" && echo
"$PY" -m parvagpu load "$OUT/plan.json" --url "http://127.0.0.1:$PORT" --duration 20 --json "$OUT/load.json" \
  || echo "load: an SLO was missed or a request failed (see $OUT/load.json)"
"$PY" - "$OUT/load.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
for m in r["models"]:
    print(f"{m['model']}: sent {m['sent']} ok {m['ok']} 503 {m['rejected']} failed {m['failed']} lost {m['lost']} "
          f"p50 {m['p50_ms']} ms p99 {m['p99_ms']} ms (SLO {m['slo_ms']} ms)")
assert r["lost"] == 0, "requests lost"
EOF
kill -INT "$SERVE"; wait "$SERVE" || true
trap - EXIT

step "4. MIG state again (must be unchanged)"
AFTER="$(read_mig)"
echo "$AFTER" | tee "$OUT/mig-after.json"
[ "$AFTER" = "$BEFORE" ] || { echo "device_check: MIG state changed" >&2; exit 4; }
echo "device check passed in ${SECONDS}s; files in $OUT"
