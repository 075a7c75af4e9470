#!/usr/bin/env bash
# Switch the `guard` Service between the blue and the green guard Deployment, safely.
#
#   deploy/k8s/guard-switch.sh [--namespace NS] [--dry-run] [--skip-compare] blue|green
#
# 1. Health-checks the target colour: `kubectl rollout status` of guard-<colour>, at least one Ready
#    pod, and GET /v1/models through `kubectl port-forward deployment/guard-<colour>` lists the model.
#    Then compares it with the live colour: `guardq guard compare` sends guardq's golden set to both
#    (through port-forwards to each Deployment) and must pass (label agreement and p99 ratio within
#    GUARD_SWITCH_MIN_AGREEMENT, default 0.98, and GUARD_SWITCH_MAX_P99_RATIO, default 1.5).
#    --skip-compare skips the comparison (logged). A failing check changes nothing (exit 1).
# 2. Patches the Service selector (color: <target>) with `kubectl patch`. --dry-run stops before this
#    step and prints the patch instead; the read-only checks of step 1 still run.
# 3. Verifies through the Service: the selector reads back, every EndpointSlice endpoint is a
#    guard-<target> pod, and GET /v1/models through `kubectl port-forward service/guard` answers.
# 4. If the verification fails, patches the selector back to the previous colour (exit 1).
#
# Needs kubectl (with access to the namespace) and curl on the operator's machine. The checks go
# through port-forwards to 127.0.0.1, so nothing needs to run inside the cluster.
#
# Environment: GUARD_API_KEY (bearer token for /v1, when the guard requires one; sent through curl's
# stdin, never on a command line), GUARD_SWITCH_ATTEMPTS (default 10) and GUARD_SWITCH_INTERVAL_S
# (default 3): how often and how far apart each HTTP check is tried, GUARD_SWITCH_ROLLOUT_TIMEOUT
# (default 300s), GUARD_SWITCH_LOCAL_PORT (default 18000; the Service check uses the next port, the
# comparison the two after it), GUARDQ (the guardq command, default `guardq`), GUARD_SWITCH_BACKEND
# (the guards' guardq backend, default GUARDQ_GUARD_BACKEND or qwen3guard). The comparison reads the
# API key from GUARDQ_GUARD_API_KEY (or GUARD_API_KEY).
#
# Exit codes: 0 switched (or already on the target, or a dry run whose checks passed), 1 not
# switched or rolled back, 2 usage error.
set -euo pipefail

SERVICE=guard
MODEL=Qwen/Qwen3Guard-Gen-8B
NAMESPACE=""
DRY_RUN=0
SKIP_COMPARE=0
TARGET=""
ATTEMPTS=${GUARD_SWITCH_ATTEMPTS:-10}
INTERVAL_S=${GUARD_SWITCH_INTERVAL_S:-3}
ROLLOUT_TIMEOUT=${GUARD_SWITCH_ROLLOUT_TIMEOUT:-300s}
LOCAL_PORT=${GUARD_SWITCH_LOCAL_PORT:-18000}
PF_PID=""
PF_PIDS=()

usage() {
    echo "usage: $0 [--namespace NS] [--service NAME] [--model NAME] [--dry-run] [--skip-compare] blue|green" >&2
    exit 2
}

log() {
    echo "guard-switch: $*" >&2
}

NS_ARGS=()

kc() {
    kubectl "${NS_ARGS[@]}" "$@"
}

stop_port_forward() {
    local pid
    for pid in "$PF_PID" "${PF_PIDS[@]}"; do
        if [[ -n "$pid" ]]; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    PF_PID=""
    PF_PIDS=()
}
trap stop_port_forward EXIT

# GET /v1/models on a local port; succeeds when the reply lists the model.
models_answer() {
    local port=$1 body
    local url="http://127.0.0.1:${port}/v1/models"
    if [[ -n "${GUARD_API_KEY:-}" ]]; then
        body=$(printf 'header = "Authorization: Bearer %s"\n' "$GUARD_API_KEY" |
            curl --silent --fail --max-time 5 --config - "$url") || return 1
    else
        body=$(curl --silent --fail --max-time 5 "$url") || return 1
    fi
    grep -qF -- "\"${MODEL}\"" <<<"$body"
}

# Port-forward to a resource (deployment/x or service/x) and retry /v1/models a bounded number of times.
check_models_through() {
    local resource=$1 port=$2 attempt
    # kubectl itself in the background (not the kc function, which would fork a subshell), so that
    # $! is the port-forward and stop_port_forward ends it.
    kubectl "${NS_ARGS[@]}" port-forward "$resource" "${port}:8000" >/dev/null 2>&1 &
    PF_PID=$!
    for ((attempt = 1; attempt <= ATTEMPTS; attempt++)); do
        if models_answer "$port"; then
            stop_port_forward
            log "$resource answers /v1/models with $MODEL"
            return 0
        fi
        sleep "$INTERVAL_S"
    done
    stop_port_forward
    log "$resource did not list $MODEL on /v1/models after $ATTEMPTS attempts"
    return 1
}

check_colour() {
    local colour=$1 ready
    if ! kc rollout status "deployment/guard-${colour}" --timeout="$ROLLOUT_TIMEOUT" >&2; then
        log "deployment guard-${colour} is not rolled out"
        return 1
    fi
    ready=$(kc get deployment "guard-${colour}" -o jsonpath='{.status.readyReplicas}')
    if [[ -z "$ready" || "$ready" -lt 1 ]]; then
        log "deployment guard-${colour} has no Ready pod"
        return 1
    fi
    log "guard-${colour}: ${ready} Ready pod(s)"
    check_models_through "deployment/guard-${colour}" "$LOCAL_PORT"
}

# /v1/models answers on a port-forward's local port (a bounded number of tries).
wait_for_port() {
    local port=$1 attempt
    for ((attempt = 1; attempt <= ATTEMPTS; attempt++)); do
        models_answer "$port" && return 0
        sleep "$INTERVAL_S"
    done
    return 1
}

# `guardq guard compare`: the live colour as A, the target as B, each through its own port-forward.
compare_colours() {
    local live=$1 target=$2 a_port=$((LOCAL_PORT + 2)) b_port=$((LOCAL_PORT + 3)) rc backend
    backend=${GUARD_SWITCH_BACKEND:-${GUARDQ_GUARD_BACKEND:-qwen3guard}}
    kubectl "${NS_ARGS[@]}" port-forward "deployment/guard-${live}" "${a_port}:8000" >/dev/null 2>&1 &
    PF_PIDS+=("$!")
    kubectl "${NS_ARGS[@]}" port-forward "deployment/guard-${target}" "${b_port}:8000" >/dev/null 2>&1 &
    PF_PIDS+=("$!")
    if ! wait_for_port "$a_port" || ! wait_for_port "$b_port"; then
        stop_port_forward
        log "the port-forwards to guard-${live} and guard-${target} did not answer; not comparing"
        return 1
    fi
    log "comparing guard-${target} (B) with guard-${live} (A) on guardq's golden set"
    rc=0
    GUARDQ_GUARD_API_KEY=${GUARDQ_GUARD_API_KEY:-${GUARD_API_KEY:-}} "${GUARDQ:-guardq}" guard compare \
        --a "http://127.0.0.1:${a_port}/v1" --b "http://127.0.0.1:${b_port}/v1" \
        --a-backend "$backend" --b-backend "$backend" --a-model "$MODEL" --b-model "$MODEL" \
        --min-agreement "${GUARD_SWITCH_MIN_AGREEMENT:-0.98}" \
        --max-p99-ratio "${GUARD_SWITCH_MAX_P99_RATIO:-1.5}" >&2 || rc=$?
    stop_port_forward
    if [[ "$rc" -ne 0 ]]; then
        log "guard-${target} does not answer like guard-${live} (guardq guard compare exit ${rc})"
        return 1
    fi
    log "guard-${target} answers like guard-${live}"
}

# Every endpoint behind the Service belongs to the colour (endpoint updates lag the patch a little).
endpoints_are() {
    local colour=$1 names name attempt
    for ((attempt = 1; attempt <= ATTEMPTS; attempt++)); do
        names=$(kc get endpointslices -l "kubernetes.io/service-name=${SERVICE}" \
            -o jsonpath='{.items[*].endpoints[*].targetRef.name}')
        local all_match=1
        for name in $names; do
            [[ "$name" == "guard-${colour}-"* ]] || all_match=0
        done
        if [[ -n "$names" && "$all_match" -eq 1 ]]; then
            return 0
        fi
        sleep "$INTERVAL_S"
    done
    log "endpoints of service ${SERVICE} are not all guard-${colour} pods: ${names:-none}"
    return 1
}

selector_colour() {
    kc get service "$SERVICE" -o jsonpath='{.spec.selector.color}'
}

verify_service() {
    local colour=$1 now
    now=$(selector_colour)
    if [[ "$now" != "$colour" ]]; then
        log "service ${SERVICE} selects color=${now:-none}, expected ${colour}"
        return 1
    fi
    endpoints_are "$colour" && check_models_through "service/${SERVICE}" "$((LOCAL_PORT + 1))"
}

patch_selector() {
    local colour=$1
    kc patch service "$SERVICE" --type merge -p "{\"spec\":{\"selector\":{\"color\":\"${colour}\"}}}"
}

parse_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            -n | --namespace) NAMESPACE=${2:?}; shift 2 ;;
            --service) SERVICE=${2:?}; shift 2 ;;
            --model) MODEL=${2:?}; shift 2 ;;
            --dry-run) DRY_RUN=1; shift ;;
            --skip-compare) SKIP_COMPARE=1; shift ;;
            -h | --help) usage ;;
            blue | green) TARGET=$1; shift ;;
            *) log "unknown argument: $1"; usage ;;
        esac
    done
    [[ -n "$TARGET" ]] || usage
    if [[ -n "$NAMESPACE" ]]; then
        NS_ARGS=(--namespace "$NAMESPACE")
    fi
}

main() {
    parse_args "$@"
    local current
    current=$(selector_colour)
    if [[ "$current" != blue && "$current" != green ]]; then
        log "service ${SERVICE} has no blue/green color selector (got '${current}'); refusing to switch"
        exit 1
    fi
    if [[ "$current" == "$TARGET" ]]; then
        log "service ${SERVICE} already selects ${TARGET}; nothing to do"
        exit 0
    fi
    log "checking guard-${TARGET} before switching from ${current}"
    if ! check_colour "$TARGET"; then
        log "guard-${TARGET} is not healthy: not switching (service ${SERVICE} stays on ${current})"
        exit 1
    fi
    if [[ "$SKIP_COMPARE" -eq 1 ]]; then
        log "WARNING: --skip-compare: guard-${TARGET} was not compared with guard-${current}"
    elif ! compare_colours "$current" "$TARGET"; then
        log "not switching (service ${SERVICE} stays on ${current}); --skip-compare overrides"
        exit 1
    fi
    if [[ "$DRY_RUN" -eq 1 ]]; then
        log "dry run: guard-${TARGET} is healthy; would run:"
        echo "kubectl${NAMESPACE:+ --namespace ${NAMESPACE}} patch service ${SERVICE} --type merge -p '{\"spec\":{\"selector\":{\"color\":\"${TARGET}\"}}}'"
        exit 0
    fi
    patch_selector "$TARGET" >&2
    if verify_service "$TARGET"; then
        log "switched service ${SERVICE} from ${current} to ${TARGET}"
        log "record color: ${TARGET} in the overlay's guard-live-colour.yaml, or the next apply moves it back"
        exit 0
    fi
    log "verification through service ${SERVICE} failed: rolling back to ${current}"
    patch_selector "$current" >&2
    if verify_service "$current"; then
        log "rolled back to ${current}"
    else
        log "WARNING: rolled back the selector to ${current}, but the service does not answer either"
    fi
    exit 1
}

main "$@"
