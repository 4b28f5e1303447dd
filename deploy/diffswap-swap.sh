#!/usr/bin/env bash
# diffswap-swap.sh: swap for this host on a diffswap export, through the kernel NBD client.
#
#   start    start diffswap.service and wait until it accepts NBD connections
#   attach   connect the export to an NBD device, mkswap it, swapon it
#   detach   swapoff the device (its pages come back to RAM), disconnect it
#   stop     stop diffswap.service (refused while the device is still active swap)
#   status   show the device's connection and swap state
#
# Exit codes: 0 done (or nothing to do), 1 the step failed, 2 bad usage.
set -euo pipefail

readonly PROG=${0##*/}
export_name=swap
host=127.0.0.1
port=10809
device=/dev/nbd0
priority=10
service=diffswap.service
# How long `start` waits for the server to listen (it may replay a large store first).
readonly START_WAIT_S=60

usage() {
  cat <<EOF
Usage: $PROG start|attach|detach|stop|status [options]

Commands:
  start    start $service and wait until it accepts NBD connections
  attach   nbd-client -b 4096 -N EXPORT HOST PORT DEVICE -swap; mkswap; swapon
  detach   swapoff DEVICE; nbd-client -d DEVICE
  stop     stop $service (refused while DEVICE is active swap: detach first)
  status   print whether DEVICE is connected and active as swap

Options:
  -e, --export NAME    export name (default: $export_name)
  -H, --host HOST      server address (default: $host)
  -p, --port PORT      server TCP port (default: $port)
  -d, --device DEV     NBD device, /dev/nbdN (default: $device)
  -P, --priority N     swap priority for swapon, -1..32767 (default: $priority)
  -s, --service UNIT   systemd unit for start/stop (default: $service)
  -h, --help           this text
EOF
}

die() {
  echo "$PROG: $*" >&2
  exit 1
}

usage_error() {
  echo "$PROG: $*" >&2
  echo "Run '$PROG --help' for usage." >&2
  exit 2
}

# --- argument parsing: every value is checked before anything is touched ----------------
parse_args() {
  [ $# -gt 0 ] || usage_error "missing command (start, attach, detach, stop or status)"
  case $1 in
    -h | --help | help)
      usage
      exit 0
      ;;
    start | attach | detach | stop | status) action=$1 ;;
    *) usage_error "unknown command '$1' (expected start, attach, detach, stop or status)" ;;
  esac
  shift
  while [ $# -gt 0 ]; do
    case $1 in
      -h | --help)
        usage
        exit 0
        ;;
      -e | --export | -H | --host | -p | --port | -d | --device | -P | --priority | -s | --service)
        [ $# -ge 2 ] || usage_error "option $1 needs a value"
        set_option "$1" "$2"
        shift 2
        ;;
      *) usage_error "unknown option '$1'" ;;
    esac
  done
  check_values
}

set_option() {
  case $1 in
    -e | --export) export_name=$2 ;;
    -H | --host) host=$2 ;;
    -p | --port) port=$2 ;;
    -d | --device) device=$2 ;;
    -P | --priority) priority=$2 ;;
    -s | --service) service=$2 ;;
  esac
}

check_values() {
  [ -n "$export_name" ] || usage_error "the export name must not be empty"
  [ ${#export_name} -le 4096 ] || usage_error "the export name is longer than 4096 bytes"
  [ -n "$host" ] || usage_error "the host must not be empty"
  if ! [[ $port =~ ^[0-9]+$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
    usage_error "the port must be a number from 1 to 65535, got '$port'"
  fi
  [[ $device =~ ^/dev/nbd[0-9]+$ ]] || usage_error "the device must be /dev/nbdN, got '$device'"
  if ! [[ $priority =~ ^-?[0-9]+$ ]] || [ "$priority" -lt -1 ] || [ "$priority" -gt 32767 ]; then
    usage_error "the swap priority must be a number from -1 to 32767, got '$priority'"
  fi
  [[ $service =~ ^[A-Za-z0-9@_.:-]+$ ]] || usage_error "'$service' is not a unit name"
}

# --- checks on the host -----------------------------------------------------------------
require_root() {
  [ "$(id -u)" -eq 0 ] || die "$action needs root (NBD devices and swap are root-only)"
}

require_tools() {
  local missing=() tool
  for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  if [ ${#missing[@]} -gt 0 ]; then
    die "missing tools: ${missing[*]} (Debian packages: nbd-client, util-linux, kmod, systemd)"
  fi
}

# The device node exists once the nbd module is loaded; load it on first use.
require_device() {
  if [ ! -b "$device" ]; then
    if command -v modprobe >/dev/null 2>&1; then modprobe nbd 2>/dev/null || true; fi
    if command -v udevadm >/dev/null 2>&1; then udevadm settle 2>/dev/null || true; fi
  fi
  [ -b "$device" ] || die "$device is not a block device: the kernel needs the nbd module" \
    "('modprobe nbd'; more devices with 'modprobe nbd nbds_max=N')"
}

device_name() { echo "${device#/dev/}"; }

is_connected() {
  local pid_file
  pid_file="/sys/block/$(device_name)/pid"
  [ -r "$pid_file" ] && [ -s "$pid_file" ]
}

is_active_swap() {
  awk -v dev="$device" 'NR > 1 && $1 == dev { found = 1 } END { exit !found }' /proc/swaps
}

port_open() {
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

# --- commands ---------------------------------------------------------------------------
cmd_start() {
  require_root
  require_tools systemctl
  systemctl start "$service" || die "systemctl start $service failed; see: journalctl -u $service"
  local waited=0
  until port_open; do
    [ "$waited" -lt "$START_WAIT_S" ] ||
      die "$service started but nothing listens on $host:$port after ${START_WAIT_S}s"
    sleep 1
    waited=$((waited + 1))
  done
  echo "$service is listening on $host:$port"
}

cmd_attach() {
  require_root
  require_tools nbd-client mkswap swapon
  port_open || die "nothing listens on $host:$port: start the server first ($PROG start)"
  require_device
  if is_connected; then
    die "$device is already connected (pid $(cat "/sys/block/$(device_name)/pid"));" \
      "detach it first or pick another --device"
  fi
  # -b 4096: the page size, so the kernel never sends diffswap partial pages.
  # -swap: nbd-client locks itself in memory; it must not be swapped out to its own device.
  nbd-client -b 4096 -N "$export_name" "$host" "$port" "$device" -swap ||
    die "nbd-client could not connect $device to export '$export_name' on $host:$port"
  if ! mkswap "$device" >/dev/null; then
    nbd-client -d "$device" >/dev/null 2>&1 || true
    die "mkswap $device failed (is export '$export_name' read-only?); disconnected again"
  fi
  if ! swapon -p "$priority" "$device"; then
    nbd-client -d "$device" >/dev/null 2>&1 || true
    die "swapon $device failed; disconnected again"
  fi
  echo "$device: export '$export_name' on $host:$port is active swap (priority $priority)"
}

cmd_detach() {
  require_root
  require_tools nbd-client swapoff
  local did=0
  if [ -r /proc/swaps ] && is_active_swap; then
    # swapoff faults every page on the device back into RAM; it fails if they do not fit.
    swapoff "$device" ||
      die "swapoff $device failed (not enough free memory to take its pages back?)"
    did=1
  fi
  if is_connected; then
    nbd-client -d "$device" >/dev/null || die "nbd-client -d $device failed"
    did=1
  fi
  if [ "$did" -eq 1 ]; then
    echo "$device: swap off, disconnected"
  else
    echo "$device: not active swap and not connected; nothing to do"
  fi
}

cmd_stop() {
  require_root
  require_tools systemctl
  if [ -r /proc/swaps ] && is_active_swap; then
    die "$device is active swap: stopping $service now would lose the pages on it;" \
      "run '$PROG detach' first"
  fi
  systemctl stop "$service" || die "systemctl stop $service failed"
  echo "$service stopped"
}

cmd_status() {
  local connected=no swap=no
  is_connected && connected="yes (pid $(cat "/sys/block/$(device_name)/pid"))"
  [ -r /proc/swaps ] && is_active_swap && swap=yes
  echo "device:    $device"
  echo "connected: $connected"
  echo "swap:      $swap"
  if port_open; then
    echo "server:    listening on $host:$port"
  else
    echo "server:    not listening on $host:$port"
  fi
}

main() {
  local action=
  parse_args "$@"
  "cmd_$action"
}

main "$@"
