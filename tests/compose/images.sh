#!/usr/bin/env bash
# images.sh: the images `make test-compose` runs, made on this machine from
# Debian packages, because no image registry is reachable from it.
#
#   images.sh bases      debian:12 and debian:12-slim (the Dockerfile's
#                        bases), debootstrapped from the Debian mirror this
#                        machine's apt sources name, imported with podman
#   images.sh standins   postgres:15, redis:7 and nginx:1.27 stand-ins, built
#                        on debian:12-slim from Debian's postgresql-15, redis
#                        and nginx-light (see tests/compose/images/*/)
#
# Sourced by test-compose.sh, which sets up podman first (CONTAINERS_CONF,
# CONTAINERS_STORAGE_CONF: the test's own storage in $CACHE/storage, so that
# nothing here is seen by another podman user of this machine). Each image
# is made once and kept in that storage; a label records what it was made
# from (the mirror, the Containerfile's hash), and a changed input makes it
# again. $CACHE/rootfs-bookworm.tar is the debootstrapped tree, kept too.

# The Debian mirror and the security mirror of this machine's apt sources
# (deb822 .sources files or one-line .list entries).
apt_mirror() { # SUITE-PATTERN: the first URI serving a suite that matches
    local pat=$1
    {
        cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk -v pat="$pat" '$1 == "deb" { u = $2; if ($2 ~ /^\[/) { u = $3; s = $4 } else s = $3
                                           if (s ~ pat) print u }'
        for f in /etc/apt/sources.list.d/*.sources; do
            [ -f "$f" ] || continue
            awk -v pat="$pat" 'BEGIN { RS = ""; FS = "\n" }
                { u = ""; s = ""; deb = 0
                  for (i = 1; i <= NF; i++) {
                      if ($i ~ /^URIs:/) { u = $i; sub(/^URIs:[ \t]*/, "", u); sub(/[ \t].*/, "", u) }
                      if ($i ~ /^Suites:/) s = $i
                      if ($i ~ /^Types:.*deb( |$)/) deb = 1
                  }
                  if (deb && u != "" && s ~ pat) print u }' "$f"
        done
    } | head -n 1
}

# image_label IMAGE: the input label of IMAGE, empty when there is none.
image_label() {
    podman image inspect --format '{{index .Labels "couponsvc.test.input"}}' "$1" 2>/dev/null || true
}

# The debootstrapped bookworm tree as a tarball, and the two bases from it.
# debian:12 is the minimal tree (debootstrap --variant=minbase, as the
# official image); debian:12-slim is the same without documentation, man
# pages and locales, and with dpkg told to leave them out of later installs
# (as the official slim image does).
make_bases() {
    local mirror sec input rootfs tar
    mirror=$(apt_mirror 'bookworm( |$)')
    sec=$(apt_mirror 'bookworm-security')
    [ -n "$mirror" ] || die "no Debian bookworm mirror in /etc/apt/sources*"
    input="debootstrap minbase bookworm $mirror security=${sec:-none} v1"
    if [ "$(image_label docker.io/library/debian:12)" = "$input" ] &&
        [ "$(image_label docker.io/library/debian:12-slim)" = "$input" ]; then
        say "bases: debian:12 and debian:12-slim cached ($mirror)"
        return 0
    fi
    tar=$CACHE/rootfs-bookworm.tar
    if [ ! -s "$tar" ] || [ "$(cat "$tar.input" 2>/dev/null)" != "$input" ]; then
        rootfs=$CACHE/rootfs-bookworm.tmp
        rm -rf "$rootfs"
        say "bases: debootstrap --variant=minbase bookworm from $mirror (about a minute)"
        debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$LOGS/debootstrap.log" 2>&1 || {
            tail -n 20 "$LOGS/debootstrap.log" >&2
            die "debootstrap failed (see $LOGS/debootstrap.log)"
        }
        # The image's apt sources: this machine's mirrors, as the official
        # image names deb.debian.org.
        rm -f "$rootfs/etc/apt/sources.list"
        {
            printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\n' "$mirror"
            printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
            if [ -n "$sec" ]; then
                printf '\nTypes: deb\nURIs: %s\nSuites: bookworm-security\nComponents: main\n' "$sec"
                printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
            fi
        } >"$rootfs/etc/apt/sources.list.d/debian.sources"
        # As in the official image: no service starts from a package's
        # install script, and no apt cache is kept.
        printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
        chmod 755 "$rootfs/usr/sbin/policy-rc.d"
        printf 'APT::Install-Recommends "false";\n' >"$rootfs/etc/apt/apt.conf.d/docker-no-recommends"
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
            "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log
        : >"$rootfs/etc/resolv.conf"
        : >"$rootfs/etc/hostname"
        tar -C "$rootfs" --numeric-owner -cf "$tar.tmp" . || die "tar of the bookworm tree failed"
        mv "$tar.tmp" "$tar"
        printf '%s\n' "$input" >"$tar.input"
        rm -rf "$rootfs"
    fi
    say "bases: podman import debian:12"
    podman import --change 'CMD ["bash"]' --change "LABEL couponsvc.test.input=\"$input\"" \
        "$tar" docker.io/library/debian:12 >/dev/null || die "podman import debian:12 failed"
    say "bases: debian:12-slim"
    # The slim variant: one more layer on debian:12 would keep the removed
    # files in the lower layer; a tar filtered on its way in does not.
    local slim=$CACHE/slim.tmp
    rm -rf "$slim"
    mkdir -p "$slim"
    tar -C "$slim" -xf "$tar" --exclude='./usr/share/doc/*' --exclude='./usr/share/man/*' \
        --exclude='./usr/share/info/*' --exclude='./usr/share/locale/*' || die "untar failed"
    mkdir -p "$slim/etc/dpkg/dpkg.cfg.d"
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
        'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
        'path-exclude /usr/share/locale/*' >"$slim/etc/dpkg/dpkg.cfg.d/docker"
    tar -C "$slim" --numeric-owner -c . |
        podman import --change 'CMD ["bash"]' --change "LABEL couponsvc.test.input=\"$input\"" \
            - docker.io/library/debian:12-slim >/dev/null || die "podman import debian:12-slim failed"
    rm -rf "$slim"
}

# The stand-ins: each directory of tests/compose/images/ is one image, its
# name in the file NAME there. Rebuilt when the directory's content or the
# base changed.
make_standins() {
    local d name input base
    base=$(podman image inspect --format '{{.Id}}' docker.io/library/debian:12-slim) ||
        die "no debian:12-slim: images.sh bases first"
    for d in "$HERE"/images/*/; do
        name=$(cat "$d/NAME")
        input="$(cd "$d" && find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16) base=${base:0:12}"
        if [ "$(image_label "$name")" = "$input" ]; then
            say "stand-in $name: cached"
            continue
        fi
        say "stand-in $name: building from Debian packages"
        podman build --network host --label "couponsvc.test.input=$input" -t "$name" "$d" \
            >"$LOGS/build-$(basename "$d").log" 2>&1 || {
            tail -n 30 "$LOGS/build-$(basename "$d").log" >&2
            die "building $name failed (see $LOGS/build-$(basename "$d").log)"
        }
    done
}
