#!/usr/bin/env bash
# Builds the example's base image offline, from Debian's busybox-static: an OCI image layout at
# examples/hello/busybox-oci (tag `latest`) holding /bin/busybox, its applets, and a few files of
# /etc. Sandboxfile.example uses it as `oci:examples/hello/busybox-oci:latest`.
# Needs: busybox-static, umoci, GNU tar (all installed by .ci/setup).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
layout=$here/busybox-oci
[ -f "$layout/index.json" ] && exit 0
busybox=$(command -v busybox) || { echo "make-image.sh: install busybox-static" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

root=$work/rootfs
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,proc,sys,dev,run}
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list-full); do
  [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
printf '127.0.0.1 localhost\n' > "$root/etc/hosts"
printf 'Welcome to the msb example.\n' > "$root/etc/motd"
printf 'busybox example image\n' > "$root/etc/issue"

tar --sort=name --mtime=@1 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$work/layer.tar" .
umoci init --layout "$work/layout"
umoci new --image "$work/layout:latest"
umoci raw add-layer --image "$work/layout:latest" "$work/layer.tar"
umoci config --image "$work/layout:latest" --config.cmd /bin/sh --config.env PATH=/usr/sbin:/usr/bin:/sbin:/bin
mv "$work/layout" "$layout"
echo "built $layout"
