#!/usr/bin/env bash
# Builds the root filesystem of the Dockerfile without Docker, as root on Debian 12.
#
# FROM debian:bookworm-slim becomes an mmdebstrap of bookworm (variant minbase, the same
# package set debian:bookworm-slim is built from, with its "slim" dpkg excludes); then
# every ARG, ENV, COPY and RUN of the Dockerfile runs in order, RUN in a chroot with the
# Dockerfile's environment, /proc and /dev, and the host's resolv.conf. Anything else in
# the Dockerfile (another stage, USER, ADD, ...) is refused rather than approximated.
#
# Cached like Docker's layers, in two: everything before the first COPY (the slow part:
# bootstrap, apt, headers), and the rest (the package from this repository). Each is
# rebuilt only when its inputs change: this script, the Dockerfile's steps, the mirror,
# and the content of the COPY sources after .dockerignore.
#
# Usage: scripts/build-rootfs.sh [--print-plan | --print-key]
#   (no option)   build if needed; print the image directory on stdout: it holds rootfs/
#                 and config.json (Env, Entrypoint, Cmd as in a Docker image config)
#   --print-plan  the steps parsed from the Dockerfile as JSON lines; needs no root
#   --print-key   the cache key of the image; needs no root
# Environment: OOMTRACE_ROOTFS_CACHE (default .cache/rootfs), OOMTRACE_DEBIAN_MIRROR
# (default http://deb.debian.org), OOMTRACE_DOCKERFILE (default ./Dockerfile).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${OOMTRACE_ROOTFS_CACHE:-$REPO/.cache/rootfs}"
MIRROR="${OOMTRACE_DEBIAN_MIRROR:-http://deb.debian.org}"
DOCKERFILE="${OOMTRACE_DOCKERFILE:-$REPO/Dockerfile}"
SELF="$REPO/scripts/build-rootfs.sh"

# Parses the Dockerfile and .dockerignore; plans, keys and copies. Standard library only.
read -r -d '' HELPER <<'PY' || true
import fnmatch, hashlib, json, os, shlex, shutil, sys

SUPPORTED = {"FROM", "ARG", "ENV", "COPY", "RUN", "ENTRYPOINT", "CMD", "LABEL"}
BASES = {"debian:bookworm-slim": "bookworm"}  # FROM image -> Debian suite bootstrapped


def fail(message):
    sys.exit(f"build-rootfs: {message}")


def instructions(path):
    """(keyword, text) per instruction: comment lines dropped, continuations joined."""
    out, pending = [], ""
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if line.strip().startswith("#") or (not line.strip() and not pending):
                continue
            if line.endswith("\\"):
                pending += line[:-1]
                continue
            text = (pending + line).strip()
            pending = ""
            if text:
                keyword, _, rest = text.partition(" ")
                out.append((keyword.upper(), rest.strip()))
    if pending.strip():
        fail("Dockerfile ends inside a continued line")
    return out


def assignments(text, keyword):
    pairs = {}
    for word in shlex.split(text):
        name, eq, value = word.partition("=")
        if not eq or "$" in value:
            fail(f"{keyword} {text!r}: only NAME=value without variables is supported")
        pairs[name] = value
    return pairs


def plan(dockerfile):
    steps = []
    for number, (keyword, text) in enumerate(instructions(dockerfile)):
        if keyword not in SUPPORTED:
            fail(f"unsupported Dockerfile instruction {keyword} (this script runs FROM, ARG, ENV, COPY, RUN)")
        if keyword == "FROM":
            if number != 0 or steps:
                fail("only one stage, FROM first, is supported")
            if text not in BASES:
                fail(f"FROM {text}: only {', '.join(BASES)} is supported")
            steps.append({"op": "FROM", "image": text, "suite": BASES[text]})
        elif not steps:
            fail("the Dockerfile must start with FROM")
        elif keyword in ("ARG", "ENV"):
            steps.append({"op": keyword, "set": assignments(text, keyword)})
        elif keyword == "COPY":
            words = shlex.split(text)
            if len(words) < 2 or any(w.startswith("--") for w in words):
                fail(f"COPY {text!r}: only 'COPY SRC... DEST' is supported")
            steps.append({"op": "COPY", "src": words[:-1], "dest": words[-1]})
        elif keyword == "RUN":
            if text.startswith("["):
                fail("RUN in exec form is not supported")
            steps.append({"op": "RUN", "command": text})
        elif keyword in ("ENTRYPOINT", "CMD"):
            steps.append({"op": keyword, "argv": json.loads(text)})
        # LABEL: metadata only, nothing to build
    if not steps:
        fail("empty Dockerfile")
    return steps


def ignore_rules(context):
    rules = []
    path = os.path.join(context, ".dockerignore")
    if os.path.exists(path):
        for line in open(path, encoding="utf-8"):
            line = line.strip()
            if line and not line.startswith("#"):
                negate = line.startswith("!")
                rules.append((negate, line.lstrip("!").rstrip("/")))
    return rules


def ignored(rel, rules):
    """Docker's rule: the last pattern that matches the path or one of its parents wins."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for negate, pattern in rules:
        for candidate in prefixes:
            if fnmatch.fnmatchcase(candidate, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatchcase(candidate.split("/")[-1], pattern[3:])
            ):
                verdict = not negate
                break
    return verdict


def context_files(context, sources):
    """(relative source file, path below the COPY destination, came from a directory), after
    .dockerignore. A directory source copies its contents, as in Docker."""
    rules, files = ignore_rules(context), []
    for src in sources:
        full = os.path.join(context, src)
        if ignored(src, rules) or not os.path.exists(full):
            fail(f"COPY {src}: not in the build context (missing, or excluded by .dockerignore)")
        if os.path.isdir(full):
            for dirpath, dirs, names in os.walk(full):
                dirs.sort()
                for name in sorted(names):
                    rel = os.path.relpath(os.path.join(dirpath, name), context)
                    if not ignored(rel, rules):
                        files.append((rel, os.path.relpath(rel, src), True))
        else:
            files.append((src, os.path.basename(src), False))
    return files


def destination(step, below, from_dir):
    dest = step["dest"]
    into_directory = from_dir or len(step["src"]) > 1 or dest.endswith("/")
    return os.path.join(dest, below) if into_directory else dest


def keys(context, steps, salt):
    """Cache keys: (everything before the first COPY, the whole image)."""
    first_copy = next((i for i, s in enumerate(steps) if s["op"] == "COPY"), len(steps))
    digest = hashlib.sha256(salt.encode())
    for step in steps[:first_copy]:
        digest.update(json.dumps(step, sort_keys=True).encode())
    base = digest.hexdigest()[:16]
    for step in steps[first_copy:]:
        digest.update(json.dumps(step, sort_keys=True).encode())
        if step["op"] == "COPY":
            for rel, below, _ in context_files(context, step["src"]):
                digest.update(f"{rel}\0{below}\0".encode())
                with open(os.path.join(context, rel), "rb") as f:
                    digest.update(hashlib.sha256(f.read()).digest())
    return base, first_copy, digest.hexdigest()[:16]


def copy(context, step, root):
    for rel, below, from_dir in context_files(context, step["src"]):
        target = os.path.join(root, destination(step, below, from_dir).lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(context, rel), target)


def main():
    command, dockerfile, context = sys.argv[1:4]
    steps = plan(dockerfile)
    if command == "plan":
        for step in steps:
            print(json.dumps(step, sort_keys=True))
    elif command == "keys":
        base, first_copy, image = keys(context, steps, sys.argv[4])
        print(base, first_copy, image)
    elif command == "copy":
        copy(context, steps[int(sys.argv[4])], sys.argv[5])
    elif command == "config":
        env, entrypoint, cmd = {}, None, None
        for step in steps:
            if step["op"] == "ENV":
                env.update(step["set"])
            elif step["op"] == "ENTRYPOINT":
                entrypoint = step["argv"]
            elif step["op"] == "CMD":
                cmd = step["argv"]
        print(json.dumps({"Env": [f"{k}={v}" for k, v in env.items()], "Entrypoint": entrypoint, "Cmd": cmd}))
    else:
        fail(f"unknown helper command {command}")


main()
PY

helper() { python3 -c "$HELPER" "$1" "$DOCKERFILE" "$(dirname "$DOCKERFILE")" "${@:2}"; }
log() { echo "build-rootfs: $*" >&2; }

case "${1:-}" in
  --print-plan) helper plan; exit 0 ;;
  --print-key) read -r _ _ key < <(helper keys "$(sha256sum "$SELF" | cut -c1-64) $MIRROR"); echo "$key"; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--print-plan | --print-key]" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { log "needs root (mmdebstrap, chroot)"; exit 2; }
command -v mmdebstrap >/dev/null || { log "needs mmdebstrap (apt-get install mmdebstrap)"; exit 2; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9  # one build at a time; a second caller waits, then finds the cache filled
read -r base_key first_copy image_key < <(helper keys "$(sha256sum "$SELF" | cut -c1-64) $MIRROR")
mapfile -t STEPS < <(helper plan)
BASE="$CACHE/base-$base_key"
IMAGE="$CACHE/image-$image_key"

# The environment a RUN sees: Docker's default PATH, then the Dockerfile's ARG and ENV so far.
declare -A RUN_ENV=([PATH]=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin [HOME]=/root)

step_field() { python3 -c 'import json,sys; v=json.loads(sys.argv[1])[sys.argv[2]]; print(v if isinstance(v,str) else json.dumps(v))' "$1" "$2"; }

apply_env() {  # $1: a step; ARG and ENV update RUN_ENV
  local name value
  while IFS=$'\t' read -r name value; do RUN_ENV[$name]="$value"; done < <(
    python3 -c 'import json,sys; [print(f"{k}\t{v}") for k,v in json.loads(sys.argv[1])["set"].items()]' "$1")
}

# The host's CA bundle, for RUN steps that fetch over TLS (pip) behind a TLS-inspecting
# proxy; like resolv.conf it is visible only while a step runs and never stays in the image.
HOST_CA="${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"

run_in() {  # $1: rootfs, $2: shell command. In a private mount namespace: nothing leaks out.
  local root="$1" envs=() name
  for name in "${!RUN_ENV[@]}"; do envs+=("$name=${RUN_ENV[$name]}"); done
  if [ -f "$HOST_CA" ]; then envs+=(PIP_CERT=/run/build-rootfs/ca.crt SSL_CERT_FILE=/run/build-rootfs/ca.crt); fi
  unshare --mount --propagation private -- bash -euc '
    root=$1 ca=$2; shift 2
    mount --rbind /dev "$root/dev"
    mount -t proc proc "$root/proc"
    created=
    if [ ! -e "$root/etc/resolv.conf" ]; then : > "$root/etc/resolv.conf"; created=1; fi
    mount --bind -o ro /etc/resolv.conf "$root/etc/resolv.conf"
    mkdir "$root/run/build-rootfs"
    mount -t tmpfs -o size=16m tmpfs "$root/run/build-rootfs"
    if [ -f "$ca" ]; then cp "$ca" "$root/run/build-rootfs/ca.crt"; fi
    rc=0; chroot "$root" /usr/bin/env -i "$@" || rc=$?
    umount "$root/etc/resolv.conf" "$root/run/build-rootfs"
    rmdir "$root/run/build-rootfs"
    if [ -n "$created" ]; then rm -f "$root/etc/resolv.conf"; fi
    exit $rc' _ "$root" "$HOST_CA" "${envs[@]}" /bin/sh -c "cd / && $2" >&2
}

apply_steps() {  # $1: rootfs, $2: first step, $3: end (exclusive)
  local i step op
  for ((i = $2; i < $3; i++)); do
    step="${STEPS[$i]}"
    op="$(step_field "$step" op)"
    case "$op" in
      FROM) ;;
      ARG | ENV) apply_env "$step" ;;
      RUN) log "RUN $(step_field "$step" command | head -c 100)"; run_in "$1" "$(step_field "$step" command)" ;;
      COPY) log "COPY $(step_field "$step" src) $(step_field "$step" dest)"; helper copy "$i" "$1" ;;
      ENTRYPOINT | CMD) ;;
      *) log "unexpected step $op"; exit 1 ;;
    esac
  done
}

minimize() {  # $1: rootfs. What debian:bookworm-slim carries (debuerreotype-minimizing-config).
  local etc="$1/etc"
  printf '#!/bin/sh\nexit 101\n' > "$1/usr/sbin/policy-rc.d" && chmod 0755 "$1/usr/sbin/policy-rc.d"
  echo 'force-unsafe-io' > "$etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
  echo 'Apt::AutoRemove::SuggestsImportant "false";' > "$etc/apt/apt.conf.d/docker-autoremove-suggests"
  local clean='"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true";'
  printf 'DPkg::Post-Invoke { %s };\nAPT::Update::Post-Invoke { %s };\nDir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n' \
    "$clean" "$clean" > "$etc/apt/apt.conf.d/docker-clean"
  echo 'Acquire::GzipIndexes "true";' > "$etc/apt/apt.conf.d/docker-gzip-indexes"
  echo 'Acquire::Languages "none";' > "$etc/apt/apt.conf.d/docker-no-languages"
  rm -f "$etc/resolv.conf"  # the host's, copied by mmdebstrap; a container runtime supplies its own
  rm -f "$1"/var/cache/apt/archives/*.deb "$1"/var/cache/apt/*.bin
}

started=$SECONDS
if [ ! -d "$IMAGE/rootfs" ]; then
  if [ ! -d "$BASE/rootfs" ]; then
    suite="$(step_field "${STEPS[0]}" suite)"
    log "bootstrapping Debian $suite (minbase) into $BASE"
    rm -rf "$BASE.partial" && mkdir -p "$BASE.partial"
    # The slim variant's excludes (debuerreotype's .slimify-excludes/-includes), as dpkg rules.
    mmdebstrap --mode=root --format=directory --variant=minbase --quiet \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/groff/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      --dpkgopt='path-exclude=/usr/share/linda/*' --dpkgopt='path-exclude=/usr/share/lintian/overrides/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
      --dpkgopt='path-exclude=/usr/share/man/*' \
      "$suite" "$BASE.partial/rootfs" \
      "deb $MIRROR/debian $suite main" \
      "deb $MIRROR/debian $suite-updates main" \
      "deb $MIRROR/debian-security $suite-security main"
    minimize "$BASE.partial/rootfs"
    apply_steps "$BASE.partial/rootfs" 0 "$first_copy"
    mv "$BASE.partial" "$BASE"
  else
    log "cached: $BASE"
    for ((i = 0; i < first_copy; i++)); do
      case "$(step_field "${STEPS[$i]}" op)" in ARG | ENV) apply_env "${STEPS[$i]}" ;; esac
    done
  fi
  log "image layer into $IMAGE"
  rm -rf "$IMAGE.partial" && mkdir -p "$IMAGE.partial"
  cp -a --reflink=auto "$BASE/rootfs" "$IMAGE.partial/rootfs"
  apply_steps "$IMAGE.partial/rootfs" "$first_copy" "${#STEPS[@]}"
  helper config > "$IMAGE.partial/config.json"
  mv "$IMAGE.partial" "$IMAGE"
  log "built in $((SECONDS - started)) s"
else
  log "cached: $IMAGE"
fi
# Older layers are of no further use: keep the disk bounded.
for old in "$CACHE"/base-* "$CACHE"/image-*; do
  case "$old" in "$BASE" | "$IMAGE") ;; *) rm -rf "$old" ;; esac
done
echo "$IMAGE"
