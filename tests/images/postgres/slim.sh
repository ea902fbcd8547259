#!/bin/sh
# Slims a debootstrap root for the dso Postgres test image (a test fixture). Called by
# tests/support/images.rs with the root directory as its only argument, before the root is
# cached and imported. It removes what a server that only runs initdb and postgres never reads.
set -eu
root=$1
[ -x "$root/usr/lib/postgresql/15/bin/postgres" ] || {
  echo "slim.sh: $root does not look like a Postgres 15 root" >&2
  exit 1
}

# Package caches and indexes: apt is never run inside the image.
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/var/cache/debconf/*-old

# Documentation, man pages, translations, charmaps (initdb runs with --no-locale).
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
  "$root"/usr/share/locale/* "$root"/usr/share/i18n "$root"/usr/share/lintian \
  "$root"/usr/share/bash-completion

# LLVM is only loaded by the JIT, which the entrypoint turns off (jit=off).
rm -rf "$root"/usr/lib/postgresql/15/lib/bitcode "$root"/usr/lib/postgresql/15/lib/llvmjit.so \
  "$root"/usr/lib/postgresql/15/lib/llvmjit_types.bc
rm -f "$root"/usr/lib/x86_64-linux-gnu/libLLVM-*.so*

# Perl only serves postgresql-common's cluster wrappers, which the entrypoint does not use.
rm -rf "$root"/usr/share/perl "$root"/usr/lib/x86_64-linux-gnu/perl "$root"/usr/share/perl5

# The cluster the package's postinst created: the entrypoint makes its own in $PGDATA.
rm -rf "$root"/var/lib/postgresql/15 "$root"/etc/postgresql/15/main

# Logs of the bootstrap itself.
rm -rf "$root"/var/log/* "$root"/debootstrap
