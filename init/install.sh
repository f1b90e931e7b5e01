#!/bin/sh
# Installs shardspawn as qmail-rspawn in a qmail home.
#
# usage: install.sh [QMAILHOME]            (default /var/qmail)
#
# What it does, and what uninstall.sh undoes:
# - QMAILHOME/bin/shardspawn: the binary ($SHARDSPAWN_BIN, default
#   target/release/shardspawn of this tree), owner root, group qmail,
#   mode 0711, as qmail's hier.c installs qmail-rspawn; replaced by a
#   rename, so a running spawner never sees half a file;
# - QMAILHOME/bin/qmail-rspawn: a symlink to shardspawn. The original is
#   kept as qmail-rspawn.stock, a hard link to the very same file (bytes,
#   mode, owner, times), and an existing .stock is never overwritten;
# - the state and log directories ($SHARDSPAWN_STATE_DIR, default
#   /run/shardspawn, relative to QMAILHOME if relative; and
#   $SHARDSPAWN_LOG_DIR, default /var/log/shardspawn), owned by qmailr,
#   the user qmail-start runs qmail-rspawn as.
#
# Run it again to upgrade the binary: the original stays kept. Then
# restart qmail-send (svc -t /service/qmail-send, or sv restart
# qmail-send): qmail-start runs qmail-rspawn only when it starts.
#
# Users and groups, for other layouts (and tests): OWNER_USER (root),
# QMAIL_GROUP (qmail), QMAILR_USER (qmailr); names or numbers.
#
# The framing: qmail-send's delnums are 1 byte (stock) or 2 (the
# big-concurrency patch), fixed when it was built, and shardspawn must
# be told which (SHARDSPAWN_DELNUM_BYTES). The qmail-rspawn being
# replaced was built with it and says it in its first write, the
# concurrency announcement: 1 byte or 2. So the kept original is run
# once, with stdin at EOF (it then exits at once), as QMAILR_USER when
# run as root, from a scratch directory, and the bytes it writes are
# counted. (Like every start of qmail-rspawn, this zeroes
# queue/lock/tcpto: remembered TCP timeouts are forgotten.) With ENVDIR
# set to the qmail-send service's env directory (e.g.
# /service/qmail-send/env) the answer is written there as the file
# SHARDSPAWN_DELNUM_BYTES; without it, or if the original cannot be run
# or says something else, it is only printed and nothing is changed.
set -eu
me=install.sh

fatal() {
  echo "$me: fatal: $*" >&2
  exit 111
}

case ${1:-} in
  -*) echo "usage: $me [QMAILHOME]" >&2; exit 100 ;;
esac
home=${1:-/var/qmail}
here=$(cd "$(dirname "$0")" && pwd)
bin=${SHARDSPAWN_BIN:-$here/../target/release/shardspawn}
owner=${OWNER_USER:-root}
group=${QMAIL_GROUP:-qmail}
qmailr=${QMAILR_USER:-qmailr}
state=${SHARDSPAWN_STATE_DIR:-/run/shardspawn}
logs=${SHARDSPAWN_LOG_DIR:-/var/log/shardspawn}
home=$(cd "$home" && pwd) || fatal "unable to find $home"
case $state in
  /*) ;;
  *) state=$home/$state ;;
esac
case $logs in
  /*) ;;
  *) fatal "SHARDSPAWN_LOG_DIR=$logs: must be an absolute path" ;;
esac

envdir=${ENVDIR:-}
if [ -n "$envdir" ]; then
  [ -d "$envdir" ] ||
    fatal "ENVDIR=$envdir is not a directory: name the qmail-send" \
      "service's env directory, or leave ENVDIR unset"
  envdir=$(cd "$envdir" && pwd)
fi

[ -f "$bin" ] ||
  fatal "no binary at $bin: run cargo build --release, or name it in" \
    "SHARDSPAWN_BIN"
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
cd "$home/bin" || fatal "unable to chdir to $home/bin: is qmail installed?"

# Is qmail-rspawn ours already (an earlier install)?
ours() {
  [ -L qmail-rspawn ] && [ "$(readlink qmail-rspawn)" = shardspawn ]
}

if ! ours; then
  if [ -e qmail-rspawn.stock ] || [ -L qmail-rspawn.stock ]; then
    fatal "$home/bin has a qmail-rspawn.stock, and its qmail-rspawn is" \
      "not shardspawn (qmail reinstalled?): keep the one you want as" \
      "qmail-rspawn.stock, remove the other, and run this again"
  fi
  [ -f qmail-rspawn ] && [ ! -L qmail-rspawn ] ||
    fatal "$home/bin/qmail-rspawn is missing or not a file: is qmail" \
      "installed?"
fi

# The binary: a copy beside it first, then one rename.
rm -f shardspawn.new
cp "$bin" shardspawn.new
chown "$owner:$group" shardspawn.new
chmod 0711 shardspawn.new
mv -f shardspawn.new shardspawn
echo "$me: installed $home/bin/shardspawn"

if ours; then
  echo "$me: $home/bin/qmail-rspawn is shardspawn already; the original" \
    "stays in qmail-rspawn.stock"
else
  # Kept first, then replaced by one rename: there is always a
  # qmail-rspawn, and the original is never copied, only linked.
  ln qmail-rspawn qmail-rspawn.stock 2>/dev/null ||
    cp -p qmail-rspawn qmail-rspawn.stock
  rm -f qmail-rspawn.new
  ln -s shardspawn qmail-rspawn.new
  chown -h "$owner:$group" qmail-rspawn.new
  mv -f qmail-rspawn.new qmail-rspawn
  echo "$me: $home/bin/qmail-rspawn is now shardspawn; the original is" \
    "qmail-rspawn.stock"
fi

# announcement PROGRAM: the number of bytes PROGRAM (a qmail-rspawn)
# writes before it exits, given stdin at EOF; nothing if it cannot run.
# Run as qmailr when we are root, as qmail-start runs it, never as root;
# stdin /dev/null, which stock's select reads as EOF; at most 10 seconds.
announcement() {
  scratch=$(mktemp -d) || return 0
  chmod 0755 "$scratch"
  out=$scratch/announcement
  if [ "$(id -u)" != 0 ]; then
    : # as ourselves
  elif command -v setpriv >/dev/null 2>&1 &&
    uid=$(id -u "$qmailr" 2>/dev/null); then
    set -- setpriv --reuid="$uid" --regid="$group" --clear-groups "$@"
  elif command -v chpst >/dev/null 2>&1; then
    set -- chpst -u "$qmailr:$group" "$@"
  else
    echo "$me: neither setpriv nor chpst is in PATH to run it as $qmailr" >&2
    rm -rf "$scratch"
    return 0
  fi
  if command -v timeout >/dev/null 2>&1; then
    set -- timeout 10 "$@"
  fi
  (cd "$scratch" && "$@" </dev/null >"$out" 2>/dev/null) || :
  if [ -s "$out" ]; then
    od -An -tu1 -v "$out" | tr -s ' \n' '  '
  fi
  rm -rf "$scratch"
}

# What the original says of the framing, and the setting it asks for.
original=$home/bin/qmail-rspawn.stock
# shellcheck disable=SC2046 # the bytes, one word each
set -- $(announcement "$original")
case $# in
  1) bytes=1 slots=$1 ;;
  2) bytes=2 slots=$(($1 + 256 * $2)) ;;
  *) bytes= ;;
esac
if [ -z "$bytes" ]; then
  if [ $# = 0 ]; then
    said="nothing (it could not run: no qmail home it can use, no user"
    said="$said qmailq?)"
  else
    said="$# bytes, not 1 or 2"
  fi
  echo "$me: the original qmail-rspawn announced $said; set" \
    "SHARDSPAWN_DELNUM_BYTES yourself: 1 for a stock qmail-send, 2 for" \
    "a big-concurrency one"
else
  echo "$me: the original qmail-rspawn announces $slots slots in $bytes" \
    "byte(s): qmail-send needs SHARDSPAWN_DELNUM_BYTES=$bytes"
  if [ -n "$envdir" ]; then
    printf '%s\n' "$bytes" >"$envdir/SHARDSPAWN_DELNUM_BYTES.new"
    mv -f "$envdir/SHARDSPAWN_DELNUM_BYTES.new" \
      "$envdir/SHARDSPAWN_DELNUM_BYTES"
    echo "$me: wrote $bytes to $envdir/SHARDSPAWN_DELNUM_BYTES"
  else
    echo "$me: put it in the qmail-send service's env directory (echo" \
      "$bytes > /service/qmail-send/env/SHARDSPAWN_DELNUM_BYTES), or run" \
      "this with ENVDIR naming that directory"
  fi
fi

for dir in "$state" "$logs"; do
  mkdir -p "$dir"
  chown "$qmailr:$group" "$dir"
  echo "$me: $dir belongs to $qmailr"
done
chmod 0750 "$state"
chmod 0750 "$logs"

echo "$me: now restart qmail-send (svc -t /service/qmail-send, or" \
  "sv restart qmail-send)"
