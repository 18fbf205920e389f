#!/bin/sh
# Installer run by the passt-binding-cni DaemonSet on every node.
#
# Copies the launcher and its bundle from the image ($CNI_SRC_DIR, default
# /cni) into the node's CNI bin dir ($CNI_BIN_DIR, default /opt/cni/bin, a
# hostPath mount). A kubelet may run the plugin at any moment, so nothing is
# ever half-written: the bundle goes to a fresh directory
# .kubevirt-passt-binding.d-<stamp>, the symlink kubevirt-passt-binding.d is
# switched to it with one rename(2), the launcher is renamed into place, and
# only then are older bundle directories removed. Afterwards it sleeps until the
# pod is deleted (a DaemonSet pod must keep running); with --once it exits after
# installing (init containers, tests).
set -eu
src=${CNI_SRC_DIR:-/cni}
dest=${CNI_BIN_DIR:-/opt/cni/bin}
name=kubevirt-passt-binding

if [ ! -x "$src/$name" ] || [ ! -x "$src/$name.d/python/bin/python3" ]; then
    echo "install.sh: $src does not hold $name and $name.d/python" >&2
    exit 1
fi
# One rename(2) that replaces DEST itself, even a symlink to a directory
# (plain mv would move SOURCE into the link's target); GNU mv.
replace() { mv -f -T "$1" "$2"; }

mkdir -p "$dest"
stamp=$(date +%Y%m%d%H%M%S)-$$
cp -a "$src/$name.d" "$dest/.$name.d-$stamp"
ln -s ".$name.d-$stamp" "$dest/.$name.d.link-$stamp"
if [ -d "$dest/$name.d" ] && [ ! -L "$dest/$name.d" ]; then
    rm -rf "$dest/$name.d"  # a plain directory from a manual install
fi
replace "$dest/.$name.d.link-$stamp" "$dest/$name.d"
cp -f "$src/$name" "$dest/.$name.new-$stamp"
chmod 0755 "$dest/.$name.new-$stamp"
replace "$dest/.$name.new-$stamp" "$dest/$name"
# Older bundles, and temporaries of an interrupted earlier run.
for old in "$dest/.$name.d-"*; do
    [ "$old" = "$dest/.$name.d-$stamp" ] || rm -rf "$old"
done
rm -f "$dest/.$name.d.link-"* "$dest/.$name.new-"*
echo "install.sh: installed $dest/$name (bundle .$name.d-$stamp)"

[ "${1:-}" = "--once" ] && exit 0
# As PID 1 of the container, sh must handle TERM itself; the sleep runs in the
# background so that the trap fires at once, and is killed with it.
sleeper=
trap 'if [ -n "$sleeper" ]; then kill "$sleeper" 2>/dev/null; fi; exit 0' TERM INT
while :; do
    sleep 3600 &
    sleeper=$!
    wait "$sleeper" || true
done
