#!/bin/sh
# Starts kvnode or kvgateway ("$@") in the kvstore chart's pods, with KV_ZONE from the file the
# zone init container wrote (zone.sh), if there is one. exec: the process is PID 1 and gets
# SIGTERM itself.
zone_file=${ZONE_FILE:-/var/run/kvstore/zone}
if [ -s "$zone_file" ]; then
  KV_ZONE=$(cat "$zone_file")
  export KV_ZONE
fi
exec "$@"
