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

for dir in "$state" "$logs"; do
  mkdir -p "$dir"
  chown "$qmailr:$group" "$dir"
  echo "$me: $dir belongs to $qmailr"
done
chmod 0750 "$state"
chmod 0750 "$logs"

echo "$me: now restart qmail-send (svc -t /service/qmail-send, or" \
  "sv restart qmail-send)"
