#!/bin/bash
# Boots a real systemd (system mode) as PID 1 of private pid/mount/net/uts/ipc/cgroup
# namespaces on the host's root file system, for tests/systemd.rs. Adapted from the
# project's systemd anchor script (systemd_pid1_ns.sh). Run it as root:
#
#   bash tests/systemd/boot_ns.sh STAGING
#
# Phase 1 (on the host) moves this process into a fresh cgroup of its own in every cgroup
# hierarchy (their paths go to STAGING/cgroups, for the caller to rmdir afterwards), so
# that the namespace's systemd manages only that subtree and two namespaces never share
# a cgroup; then it execs
#   unshare --kill-child=SIGKILL --pid --mount --net --uts --ipc --cgroup --mount-proc \
#           --propagation private /bin/bash boot_ns.sh --pid1 STAGING
# keeping its pid: kill THAT pid when done. --kill-child takes namespace PID 1 and
# everything in the namespace down with it.
#
# Phase 2 (namespace PID 1) prepares the namespace and execs systemd. STAGING holds:
#   payload/    copied to /run/resurgam-test (the binary `resurgam`, configs, …)
#   units/      copied to /run/systemd/system (unit files and *.d drop-ins)
# and receives systemd.log (the namespace's /dev/console).
#
# DANGER: the host's root file system is shared. At boot systemd's tmpfiles would empty
# the HOST's /tmp and touch /var. So phase 2 gives the namespace its own tmpfs over /run,
# /tmp, /var/tmp, /var/lib, /var/log and /var/cache and masks every systemd-tmpfiles
# unit. Everything the service needs is copied into the namespace's /run first, because
# the /tmp mount hides the host's /tmp (where STAGING usually lives).
set -eu

# The cgroup hierarchies mounted here: "MOUNTPOINT TYPE OPTIONS" lines.
cgroup_mounts() {
    awk '$2 ~ "^/sys/fs/cgroup(/|$)" && ($3 == "cgroup" || $3 == "cgroup2") { print $2, $3, $4 }' /proc/self/mounts
}

if [ "${1:-}" != --pid1 ]; then
    # ---- phase 1, on the host
    STAGING=$1
    [ -d "$STAGING/payload" ] && [ -d "$STAGING/units" ] || { echo "bad staging dir $STAGING" >&2; exit 2; }
    : > "$STAGING/cgroups"
    mounts=$(cgroup_mounts)
    # /proc/self/cgroup: "ID:CONTROLLERS:PATH" (CONTROLLERS empty for cgroup2). Read it
    # once: it changes as this loop moves the process.
    own=$(cat /proc/self/cgroup)
    while IFS=: read -r _ ctrls path; do
        # A new cpuset cgroup has no CPUs to run on: stay in the parent there.
        [ "$ctrls" = cpuset ] && continue
        mp=$(awk -v c="$ctrls" '
            $2 == "cgroup2" && c == "" { print $1; exit }
            $2 == "cgroup" && c != "" {
                n = split($3, o, ","); m = split(c, w, ","); hit = 0
                for (i = 1; i <= m; i++) for (j = 1; j <= n; j++) if (w[i] == o[j]) hit++
                if (hit == m) { print $1; exit }
            }' <<< "$mounts")
        [ -n "$mp" ] && [ -d "$mp${path%/}" ] || continue
        dir=$(mktemp -d "$mp${path%/}/resurgam-test-XXXXXX" 2>/dev/null) || continue
        echo "$dir" >> "$STAGING/cgroups"
        echo $$ > "$dir/cgroup.procs" 2>/dev/null || true
    done <<< "$own"
    exec unshare --kill-child=SIGKILL --pid --mount --net --uts --ipc --cgroup --mount-proc \
        --propagation private /bin/bash "$0" --pid1 "$STAGING"
fi

# ---- phase 2, namespace PID 1
STAGING=$2

# Never let a mount or unmount in here reach the host, whatever unshare did.
mount --make-rprivate /

# The cgroup file systems as this cgroup namespace sees them (rooted at the cgroups of
# phase 1), so systemd creates its slices there and not at the host's root.
mounts=$(cgroup_mounts)
if awk '$1 == "/sys/fs/cgroup" && $2 == "cgroup2" { found = 1 } END { exit !found }' <<< "$mounts"; then
    mount -t cgroup2 cgroup2 /sys/fs/cgroup
elif [ -n "$mounts" ]; then
    mount -t tmpfs -o mode=0755 tmpfs /sys/fs/cgroup
    while read -r mp type opts; do
        mkdir -p "$mp"
        if [ "$type" = cgroup2 ]; then
            mount -t cgroup2 cgroup2 "$mp"
        else
            mount -t cgroup -o "$opts" cgroup "$mp"
        fi
    done <<< "$mounts"
fi

mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/systemd/system /run/resurgam-test
cp -R "$STAGING/payload/." /run/resurgam-test/
cp -R "$STAGING/units/." /run/systemd/system/
chmod -R a+rX /run/resurgam-test

# systemd in a container replaces its stdio by /dev/null and may write to /dev/console:
# give the namespace a console that is a plain file (before /tmp is hidden), so nothing
# reaches the host's console.
touch "$STAGING/systemd.log"
mount --bind "$STAGING/systemd.log" /dev/console

for d in /tmp /var/tmp; do mount -t tmpfs -o mode=1777 tmpfs "$d"; done
for d in /var/lib /var/log /var/cache; do mount -t tmpfs -o mode=0755 tmpfs "$d"; done
# Also mask sysinit.target and the early units that act on the host's kernel, devices
# or /etc, so that a unit with default dependencies fails loudly ("masked") instead of
# pulling them in. The test's units use DefaultDependencies=no.
for u in systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service \
         systemd-tmpfiles-setup-dev-early.service systemd-tmpfiles-clean.timer \
         systemd-tmpfiles-clean.service sysinit.target systemd-sysctl.service \
         systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
         systemd-udev-trigger.service systemd-udev-settle.service systemd-modules-load.service \
         systemd-binfmt.service proc-sys-fs-binfmt_misc.automount systemd-sysusers.service \
         systemd-firstboot.service systemd-machine-id-commit.service systemd-random-seed.service \
         systemd-remount-fs.service systemd-hwdb-update.service ldconfig.service \
         systemd-update-done.service systemd-pstore.service systemd-boot-system-token.service \
         kmod-static-nodes.service; do
    ln -sf /dev/null "/run/systemd/system/$u"
done
# The boot target pulls in nothing: the test starts its units with systemctl.
printf '[Unit]\nDescription=resurgam test boot\nDefaultDependencies=no\n' > /run/systemd/system/resurgam-test.target

export container=unshare
exec /lib/systemd/systemd --system --unit=resurgam-test.target --log-target=console --log-level=notice
