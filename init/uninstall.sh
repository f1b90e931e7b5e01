#!/bin/sh
# Undoes install.sh: puts the original qmail-rspawn back, exactly as it
# was (qmail-rspawn.stock is renamed back over the symlink), and removes
# QMAILHOME/bin/shardspawn and the state directory. The log directory is
# kept, since it tells why you went back, unless --purge is given.
#
# usage: uninstall.sh [--purge] [QMAILHOME]      (default /var/qmail)
#
# Give it the same SHARDSPAWN_STATE_DIR and SHARDSPAWN_LOG_DIR as
# install.sh. Then restart qmail-send (svc -t /service/qmail-send, or sv
# restart qmail-send); until then the running shardspawn keeps serving.
set -eu
me=uninstall.sh

fatal() {
  echo "$me: fatal: $*" >&2
  exit 111
}

purge=
case ${1:-} in
  --purge) purge=1; shift ;;
  -*) echo "usage: $me [--purge] [QMAILHOME]" >&2; exit 100 ;;
esac
home=${1:-/var/qmail}
state=${SHARDSPAWN_STATE_DIR:-/run/shardspawn}
logs=${SHARDSPAWN_LOG_DIR:-/var/log/shardspawn}
home=$(cd "$home" && pwd) || fatal "unable to find $home"
case $state in
  /*) ;;
  *) state=$home/$state ;;
esac

cd "$home/bin" || fatal "unable to chdir to $home/bin"

ours() {
  [ -L qmail-rspawn ] && [ "$(readlink qmail-rspawn)" = shardspawn ]
}

if ours; then
  [ -f qmail-rspawn.stock ] && [ ! -L qmail-rspawn.stock ] ||
    fatal "qmail-rspawn is shardspawn, but there is no" \
      "qmail-rspawn.stock to put back: reinstall qmail's (make setup" \
      "check) and run this again"
  mv -f qmail-rspawn.stock qmail-rspawn
  echo "$me: $home/bin/qmail-rspawn is the original again"
elif [ -e qmail-rspawn.stock ]; then
  if cmp -s qmail-rspawn qmail-rspawn.stock; then
    rm -f qmail-rspawn.stock
  else
    fatal "$home/bin/qmail-rspawn is not shardspawn, and differs from" \
      "qmail-rspawn.stock: keep the one you want as qmail-rspawn, remove" \
      "the other, and run this again"
  fi
else
  echo "$me: $home/bin/qmail-rspawn is not shardspawn; nothing to put back"
fi
rm -f shardspawn shardspawn.new qmail-rspawn.new

# Only what shardspawn writes there, so a mistaken path loses nothing
# else; a directory with anything more in it stays.
if [ -d "$state" ]; then
  rm -f "$state"/supervisor* "$state"/shard[0-9]*
  rmdir "$state" 2>/dev/null ||
    echo "$me: warning: $state is not empty; left as it is"
fi
if [ -d "$logs" ]; then
  if [ -n "$purge" ]; then
    rm -rf "$logs/supervisor" "$logs"/shard[0-9]*
    rmdir "$logs" 2>/dev/null ||
      echo "$me: warning: $logs is not empty; left as it is"
  else
    echo "$me: the logs stay in $logs (uninstall.sh --purge removes them)"
  fi
fi
echo "$me: now restart qmail-send (svc -t /service/qmail-send, or" \
  "sv restart qmail-send)"
