#!/usr/bin/env bash
# Smoke test of the example deployment on this machine: nginx with deploy/nginx/voiceagent.conf
# (moved to 127.0.0.1:8080/8443, a throwaway self-signed certificate) in front of two uvicorn
# workers started by `manage.py serve` as in deploy/Procfile (the options of
# deploy/systemd/voiceagent@.service), sharing a fresh PostgreSQL database and a Redis channel
# layer; then simulated calls through wss:// with bench/bridge_latency.py.
#
#   bash deploy/smoke_test.sh        # needs nginx, openssl, PostgreSQL and Redis on 127.0.0.1
#
# POSTGRES_URL (default postgres://postgres@127.0.0.1:5432) and REDIS_URL (default
# redis://127.0.0.1:6379/11) choose the servers; ports 8001, 8002, 8080, 8443 and 8765 must be free.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=$ROOT/.venv/bin/python
POSTGRES_URL=${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
REDIS=${REDIS_URL:-redis://127.0.0.1:6379/11}
DB=voiceagent_smoke_$RANDOM
WORK=$(mktemp -d)
PIDS=()

cleanup() {
    [ -f "$WORK/nginx.pid" ] && nginx -c "$WORK/nginx.conf" -s stop 2>/dev/null || true
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql "$POSTGRES_URL/postgres" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
    rm -rf "$WORK"
}
trap cleanup EXIT

openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 \
    -addext "subjectAltName=IP:127.0.0.1" -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
sed -e "s#/etc/letsencrypt/live/voice.example.com/fullchain.pem#$WORK/cert.pem#" \
    -e "s#/etc/letsencrypt/live/voice.example.com/privkey.pem#$WORK/key.pem#" \
    -e "s#listen 443 ssl;#listen 127.0.0.1:8443 ssl;#" -e "s#listen 80;#listen 127.0.0.1:8080;#" \
    -e "/listen \[::\]/d" -e "s#root /var/www/letsencrypt;#root $WORK;#" \
    deploy/nginx/voiceagent.conf > "$WORK/site.conf"
cat > "$WORK/nginx.conf" <<EOF
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events {}
http {
    # Which worker took each request: the workers themselves keep no access log.
    log_format routed '\$uri \$status \$upstream_addr';
    access_log $WORK/access.log routed;
    client_body_temp_path $WORK;
    proxy_temp_path $WORK;
    include $WORK/site.conf;
}
EOF
nginx -t -q -c "$WORK/nginx.conf"

psql "$POSTGRES_URL/postgres" -qc "CREATE DATABASE $DB"
export DATABASE_URL=$POSTGRES_URL/$DB REDIS_URL=$REDIS PUBLIC_BASE_URL=https://127.0.0.1:8443 \
    USE_X_FORWARDED_PROTO=true DEBUG=false SECRET_KEY=smoke-test-not-a-secret \
    TWILIO_AUTH_TOKEN=bench-auth-token-0123456789abcdef OPENAI_API_KEY=sk-bench-0123456789 \
    OPENAI_REALTIME_URL=ws://127.0.0.1:8765/v1/realtime MEDIA_ROOT=$WORK/media LOG_LEVEL=WARNING
"$PY" manage.py migrate --noinput -v 0
# Workers 1 and 2 on 8001 and 8002 (WORKER_ROUTE w1, w2). Its SIGTERM (cleanup) stops both.
"$PY" manage.py serve --workers 2 --port 8001 > "$WORK/serve.log" 2>&1 &
PIDS+=($!)
nginx -c "$WORK/nginx.conf"
for i in 1 2; do  # the workers start side by side: wait for each one's own port
    for _ in $(seq 100); do
        kill -0 "${PIDS[0]}" 2>/dev/null || { echo "FAIL manage.py serve exited"; cat "$WORK/serve.log"; exit 1; }
        curl -sf -o /dev/null -H 'Host: 127.0.0.1' "http://127.0.0.1:800$i/healthz" && break
        sleep 0.2
    done
done

check() {  # name, expected, actual
    if [ "$2" = "$3" ]; then echo "ok   $1: $3"; else echo "FAIL $1: expected $2, got $3"; exit 1; fi
}
check "plain HTTP redirects to HTTPS" "301 https://127.0.0.1/admin/" \
    "$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' http://127.0.0.1:8080/admin/)"
check "admin over TLS (X-Forwarded-Proto honoured, no redirect loop)" "200" \
    "$(curl -sk -o /dev/null -w '%{http_code}' https://127.0.0.1:8443/admin/login/)"
check "static files from WhiteNoise" "200" \
    "$(curl -sk -o /dev/null -w '%{http_code}' https://127.0.0.1:8443/static/admin/css/base.css)"
for i in 1 2; do  # a probe asks each worker's own port directly, over plain HTTP
    check "worker $i health" "200" \
        "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: 127.0.0.1' http://127.0.0.1:800$i/healthz)"
done

# Calls through wss://, the certificate trusted for this run only.
unset DATABASE_URL REDIS_URL PUBLIC_BASE_URL USE_X_FORWARDED_PROTO DEBUG SECRET_KEY OPENAI_REALTIME_URL MEDIA_ROOT
SSL_CERT_FILE=$WORK/cert.pem "$PY" bench/bridge_latency.py --server-url https://127.0.0.1:8443 \
    --fake-port 8765 --database-url "$POSTGRES_URL/$DB" --calls 10 --seconds 8 --pause 0 \
    --output "$WORK/bench.json" > "$WORK/bench.log" 2>&1 || { cat "$WORK/bench.log"; exit 1; }
"$PY" - "$WORK/bench.json" <<'EOF'
import json, sys
[r] = json.load(open(sys.argv[1]))["results"]
up, down = r["caller_to_openai_ms"], r["openai_to_caller_ms"]
print(f"ok   10 calls through nginx: {r['calls_connected']} connected, {len(r['failed_calls'])} failed, "
      f"caller->OpenAI p50/p99 {up['p50']}/{up['p99']} ms, OpenAI->caller p50/p99 {down['p50']}/{down['p99']} ms")
sys.exit(0 if r["calls_connected"] == 10 and not r["failed_calls"] else 1)
EOF
for i in 1 2; do
    # Each media socket came back to the worker that answered its webhook (WORKER_ROUTE=w$i):
    # nginx sent every /media-stream/w$i to 127.0.0.1:800$i, none to the backup.
    all=$(grep -c "^/media-stream/w$i " "$WORK/access.log" || true)
    mine=$(grep -c "^/media-stream/w$i 101 127.0.0.1:800$i\$" "$WORK/access.log" || true)
    [ "$all" -gt 0 ] || { echo "FAIL no media socket was routed to worker $i"; exit 1; }
    check "worker $i took only its own calls' media sockets" "$all" "$mine"
    echo "ok   worker $i took $mine media sockets"
done
if grep -q Traceback "$WORK/serve.log"; then echo "FAIL a worker logged a traceback"; exit 1; fi
