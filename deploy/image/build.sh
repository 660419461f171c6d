#!/usr/bin/env bash
# `make image` and `make image-cuda`: the wheelhouse, the bento, the image; then the image's name and size.
#
#   deploy/image/build.sh cpu|cuda
#
# 1. Every wheel of the variant's lock (requirements/*.lock.txt), for Linux x86_64 and CPython 3.11, checked
#    against the lock's hashes, into build/wheelhouse-VARIANT/ (kept while the lock is unchanged). The bento
#    carries them, so the image build itself needs no network.
# 2. The base image the bentofile names, pulled or, where no registry can be reached, a stand-in
#    (deploy/image/base-image.sh).
# 3. `bentoml build`, then `bentoml containerize` with the engine found here.
#
# Environment: CONTAINER_ENGINE (docker, podman or buildah; default: Docker if its daemon answers, else
# Podman, else Buildah), IMAGE (default: the bento's tag, e.g. tinyserve:abc123, and tinyserve:latest),
# BENTOML and PIP (the commands, default: those on the PATH).
set -euo pipefail

variant=${1:?usage: build.sh cpu|cuda}
case $variant in
  cpu) bentofile=bentofile.yaml lock=requirements/serve.lock.txt ;;
  cuda) bentofile=bentofile.cuda.yaml lock=requirements/serve-cuda.lock.txt ;;
  *) echo "build.sh: unknown variant '$variant', expected cpu or cuda" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/../.."
bentoml=${BENTOML:-bentoml}
pip=${PIP:-pip}
export BENTOML_DO_NOT_TRACK=True PYTHONWARNINGS=ignore::UserWarning  # bentoml's CLI warns about its own options

engine=${CONTAINER_ENGINE:-}
if [[ -z $engine ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker
  elif command -v podman >/dev/null; then engine=podman
  elif command -v buildah >/dev/null; then engine=buildah
  else echo "build.sh: no container engine: install Docker, Podman or Buildah" >&2; exit 1
  fi
fi
if [[ $engine != docker ]]; then
  # RUN steps chrooted unless the caller chose otherwise: that needs no OCI runtime, so it also works inside
  # containers and on CI machines where runc or crun cannot start one.
  export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
fi

wheelhouse=build/wheelhouse-$variant
if ! cmp -s "$lock" "$wheelhouse/lock.txt" 2>/dev/null; then
  echo "wheelhouse $wheelhouse: the wheels of $lock"
  rm -rf "$wheelhouse" "$wheelhouse.partial"
  platforms=()
  for minor in $(seq 28 -1 17); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
  platforms+=(--platform manylinux2014_x86_64)  # pip also takes its older aliases from this one
  "$pip" download --quiet --disable-pip-version-check --no-deps --require-hashes --only-binary=:all: \
    "${platforms[@]}" --implementation cp --python-version 3.11 --abi cp311 -r "$lock" -d "$wheelhouse.partial"
  cp "$lock" "$wheelhouse.partial/lock.txt"
  mv "$wheelhouse.partial" "$wheelhouse"
fi

base=$(sed -n 's/^ *base_image: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$bentofile")
deploy/image/base-image.sh "$engine" "$base"

started=$SECONDS
# The bentofile packs build/wheels-VARIANT/*.whl: there only while this bento is built (hard links), so that
# another `bentoml build` (the tests', a user's) makes a bento without them, whose image installs from the index.
staged=build/wheels-$variant
rm -rf "$staged"
trap 'rm -rf "$staged"' EXIT
cp -al "$wheelhouse" "$staged"
tag=$("$bentoml" build -f "$bentofile" --output tag | sed -n 's/^__tag__://p')
rm -rf "$staged"
image=${IMAGE:-$tag}
tags=(--image-tag "$image")
[[ -n ${IMAGE:-} ]] || tags+=(--image-tag "${tag%%:*}:latest")  # `docker run tinyserve:latest` runs the newest
# containerize copies the bento to a temporary build context; BentoML 1.4.39 accepts the template there only
# under the working directory (bentoml/BentoML#5566), hence a TMPDIR inside the repository.
mkdir -p build/tmp
TMPDIR=$PWD/build/tmp "$bentoml" containerize "$tag" --backend "$engine" "${tags[@]}"

size=$("$engine" image inspect --format '{{.Size}}' "$image")
echo "image $image: $((size / 1000000)) MB, built with $engine in $((SECONDS - started)) s (bento $tag)"
