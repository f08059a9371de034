#!/usr/bin/env bash
# Make sure a Redis answers at $1 (a redis:// URL); start a local redis-server if none does.
set -euo pipefail
url="${1:-redis://127.0.0.1:6379/0}"
py="${2:-.venv/bin/python}"
ping() { "$py" -c 'import redis, sys; redis.Redis.from_url(sys.argv[1], socket_timeout=1).ping()' "$url" 2>/dev/null; }
if ping; then echo "redis: answering at $url"; exit 0; fi
hostport="${url#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
host="${hostport%%:*}"; port="${hostport##*:}"; [ "$port" = "$hostport" ] && port=6379
case "$host" in 127.0.0.1|localhost|::1) ;; *)
  echo "redis: nothing answers at $url and it is not local; start it there or set REDIS_URL" >&2; exit 1;;
esac
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis: nothing answers at $url and redis-server is not installed." >&2
  echo "  Debian/Ubuntu: sudo apt-get install redis-server    macOS: brew install redis" >&2
  echo "  or point REDIS_URL at a running Redis." >&2
  exit 1
fi
mkdir -p .leadre_cache
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
  --dir "$PWD/.leadre_cache" --logfile "$PWD/.leadre_cache/redis-$port.log"
for _ in $(seq 1 50); do ping && { echo "redis: started redis-server on port $port"; exit 0; }; sleep 0.1; done
echo "redis: redis-server did not answer on port $port; see .leadre_cache/redis-$port.log" >&2
exit 1
