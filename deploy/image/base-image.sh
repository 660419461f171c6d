#!/usr/bin/env bash
# Make sure the base image the bentofiles name is in the engine's local store: already there, else pulled,
# else (a machine that cannot reach a container registry) a stand-in built from Debian's packages with
# debootstrap, stored under the same name so that the Dockerfile's FROM finds it without a pull.
#
#   deploy/image/base-image.sh ENGINE IMAGE      e.g. podman python:3.11-slim-bookworm
#
# The stand-in imitates python:X.Y-slim-SUITE: Debian SUITE (minbase) with its python3, which must be X.Y,
# python3-venv and python3-pip, and `python` on the PATH. DEBIAN_MIRROR picks the mirror (default
# http://deb.debian.org/debian). It needs root (debootstrap) and takes about two minutes.
set -euo pipefail

engine=${1:?usage: base-image.sh ENGINE IMAGE}
image=${2:?usage: base-image.sh ENGINE IMAGE}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

case $image in
  */*) qualified=$image ;;
  *) qualified=docker.io/library/$image ;;  # what a pull of the short name stores
esac

if "$engine" image inspect "$qualified" >/dev/null 2>&1; then
  exit 0
fi
echo "base image $image: not in the local store, pulling it"
if "$engine" pull "$qualified"; then
  exit 0
fi

if [[ ! $image =~ ^python:([0-9]+\.[0-9]+)-slim-([a-z]+)$ ]]; then
  echo "base image $image cannot be pulled, and a stand-in can be built only for python:X.Y-slim-SUITE" >&2
  exit 1
fi
python_version=${BASH_REMATCH[1]}
suite=${BASH_REMATCH[2]}
if [[ $(id -u) != 0 ]]; then
  echo "base image $image cannot be pulled; building its stand-in with debootstrap needs root" >&2
  exit 1
fi
command -v debootstrap >/dev/null || { echo "base image $image cannot be pulled, and debootstrap is missing" >&2; exit 1; }

echo "base image $image cannot be pulled: building a stand-in from Debian $suite with debootstrap"
work=$(mktemp -d /var/tmp/tinyserve-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
  { tail -20 "$work/debootstrap.log" >&2; exit 1; }

got=$(chroot "$rootfs" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [[ $got != "$python_version" ]]; then
  echo "Debian $suite has Python $got, not the $python_version that $image names" >&2
  exit 1
fi
ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
# What the official slim images leave out as well: package lists, caches, documentation.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log
tar -C "$rootfs" --numeric-owner -cf "$work/rootfs.tar" .

description="stand-in for $image: Debian $suite (debootstrap) with its python3 $got, built by deploy/image/base-image.sh"
path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
case $(basename "$engine") in
  buildah)
    container=$(buildah from scratch)
    buildah add --quiet "$container" "$work/rootfs.tar" /
    buildah config --env "PATH=$path" --env LANG=C.UTF-8 --cmd python3 \
      --label "org.opencontainers.image.description=$description" "$container"
    buildah commit --quiet --rm "$container" "$qualified" >/dev/null
    ;;
  *)  # docker and podman
    "$engine" import --change "ENV PATH=$path" --change "ENV LANG=C.UTF-8" --change 'CMD ["python3"]' \
      --change "LABEL org.opencontainers.image.description=\"$description\"" \
      "$work/rootfs.tar" "$qualified" >/dev/null
    ;;
esac
echo "base image $image: stand-in stored ($description)"
