#!/bin/bash
# Boots a real systemd (system mode) as PID 1 of private pid/mount/net/uts/ipc/cgroup
# namespaces on the host's root, for tests/systemd.rs. Adapted from the project's
# systemd anchor script (systemd_pid1_ns.sh). Start it ONLY like this, as root:
#
#   unshare --kill-child=SIGKILL --pid --mount --net --uts --ipc --cgroup --mount-proc \
#           --propagation private tests/systemd/boot_ns.sh STAGING
#
# and kill that unshare process by pid when done: --kill-child takes namespace PID 1
# and everything in the namespace down with it.
#
# STAGING (a directory the test made) holds:
#   payload/            copied to /run/resurgam-test (the binary `resurgam`, configs, …)
#   units/              copied to /run/systemd/system (unit files and *.d drop-ins)
#
# DANGER: the host's root file system is shared. At boot systemd's tmpfiles would empty
# the HOST's /tmp and touch /var. So this script gives the namespace its own tmpfs over
# /run, /tmp, /var/tmp, /var/lib, /var/log and /var/cache, and masks every
# systemd-tmpfiles unit. Everything the service needs is copied into the namespace's /run
# first, because the /tmp mount hides the host's /tmp (where STAGING usually lives).
set -eu
STAGING=$1
[ -d "$STAGING/payload" ] && [ -d "$STAGING/units" ] || { echo "bad staging dir $STAGING" >&2; exit 2; }

# Never let a mount or unmount in here reach the host, whatever unshare did.
mount --make-rprivate /

mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/systemd/system /run/resurgam-test
cp -R "$STAGING/payload/." /run/resurgam-test/
cp -R "$STAGING/units/." /run/systemd/system/
chmod -R a+rX /run/resurgam-test

for d in /tmp /var/tmp; do mount -t tmpfs -o mode=1777 tmpfs "$d"; done
for d in /var/lib /var/log /var/cache; do mount -t tmpfs -o mode=0755 tmpfs "$d"; done
for u in systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service \
         systemd-tmpfiles-setup-dev-early.service systemd-tmpfiles-clean.timer \
         systemd-tmpfiles-clean.service; do
    ln -sf /dev/null "/run/systemd/system/$u"
done
# The boot target pulls in nothing: the test starts its units with systemctl.
printf '[Unit]\nDescription=resurgam test boot\nDefaultDependencies=no\n' > /run/systemd/system/resurgam-test.target

export container=unshare
exec /lib/systemd/systemd --system --unit=resurgam-test.target --log-target=console --log-level=notice
