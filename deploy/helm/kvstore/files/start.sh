#!/bin/sh
# Starts kvnode or kvgateway ("$@") in the kvstore chart's pods, with KV_ZONE from the file the
# zone init container wrote (zone.sh), if there is one. exec: the process is PID 1 and gets
# SIGTERM itself.
#
# A node that left the cluster (decommissioned by a scale-down) refuses to start on its data
# directory and writes a LEFT file there. Its volume is retained (whenScaled: Retain, so that
# no scaling ever deletes data), and a later scale-up gives the pod its old volume back: with
# REJOIN_AFTER_LEAVE=true the directory is emptied (its ranges were handed off when it left;
# nothing in it is needed) and the node joins again as a new member.
zone_file=${ZONE_FILE:-/var/run/kvstore/zone}
if [ -s "$zone_file" ]; then
  KV_ZONE=$(cat "$zone_file")
  export KV_ZONE
fi
data_dir=${KV_DATA_DIR:-}
if [ "${1##*/}" = kvnode ] && [ "${REJOIN_AFTER_LEAVE:-false}" = true ] && [ -n "$data_dir" ] \
  && [ -f "$data_dir/LEFT" ]; then
  echo "start: this node left the cluster (its ranges were handed off): emptying $data_dir to join again as a new member" >&2
  # The marker last, so that an interrupted clean-up runs again. lost+found belongs to the volume.
  find "$data_dir" -mindepth 1 -maxdepth 1 ! -name LEFT ! -name lost+found -exec rm -rf {} + || exit 1
  rm -f "$data_dir/LEFT" || exit 1
fi
exec "$@"
