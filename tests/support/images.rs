//! The two locally built images the end-to-end tests run, since no registry can be reached:
//!
//! - `dso-test/app:<hash>`: `FROM scratch` with Debian's static busybox and a tiny HTTP app that
//!   reports fingerprints of the secret it loaded (`tests/images/app/`).
//! - `dso-test/postgres:<hash>`: Postgres 15 from Debian packages, bootstrapped with debootstrap
//!   and loaded with `docker import` (`tests/images/postgres/`).
//!
//! Both are test fixtures, never product images. `<hash>` is a digest of every build input, so
//! a changed input gives a new tag and an unchanged one is never rebuilt. Builds run under a file
//! lock per image, so concurrent tests (threads or processes) build once and the rest wait. The
//! slow half of the Postgres build, the bootstrapped root, is cached on disk so a rebuild after
//! `docker rmi` only re-imports it. Both images carry the label `dso.test=1`.

use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use sha2::{Digest, Sha256};

use super::docker::{self, TEST_LABEL, check, ensure_daemon, show};

/// What the app image reports for a value it loaded: the first 16 hex digits of the SHA-256
/// of the exact bytes (`/secret-version`, see `tests/README.md`).
pub fn app_fingerprint(value: &[u8]) -> String {
    hex::encode(Sha256::digest(value))[..16].to_owned()
}

/// Bumped when the build procedure changes in a way the hashed inputs do not show.
const BUILDER_VERSION: &str = "1";

/// Where the busybox of Debian's busybox-static package lives (usr-merged or not).
const BUSYBOX: &str = "/bin/busybox";

const APP_DOCKERFILE: &[u8] = include_bytes!("../images/app/Dockerfile");
const APP_START: &[u8] = include_bytes!("../images/app/start.sh");
const APP_CGI_ENV: &[u8] = include_bytes!("../images/app/cgi-bin/env");

const POSTGRES_ENTRYPOINT: &[u8] = include_bytes!("../images/postgres/entrypoint.sh");
const POSTGRES_SLIM: &[u8] = include_bytes!("../images/postgres/slim.sh");

/// Debian release and packages of the Postgres root. The server's major version is also in
/// `entrypoint.sh` (PATH) and `slim.sh`.
const DEBIAN_SUITE: &str = "bookworm";
const DEFAULT_DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
const POSTGRES_PACKAGES: &str = "postgresql-15";

/// Where the entrypoint goes inside the Postgres root.
const POSTGRES_ENTRYPOINT_PATH: &str = "usr/local/bin/dso-test-postgres";

/// Image settings applied by `docker import --change`. `docker import` cannot set STOPSIGNAL,
/// so the entrypoint translates SIGTERM itself.
const POSTGRES_CHANGES: &[&str] = &[
    "ENTRYPOINT [\"/usr/local/bin/dso-test-postgres\"]",
    concat!(
        "ENV PATH=/usr/lib/postgresql/15/bin:",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    ),
    "ENV PGDATA=/var/lib/postgresql/data",
    "EXPOSE 5432",
    "HEALTHCHECK --interval=1s --timeout=5s --retries=60 \
     CMD [\"pg_isready\", \"-q\", \"-h\", \"127.0.0.1\", \"-p\", \"5432\"]",
];

/// Returns the tag of the app image, building it first when the daemon does not have it.
pub fn app_image() -> Result<String> {
    ensure_daemon()?;
    let busybox = read_busybox()?;
    let hash = digest(&[
        ("builder", BUILDER_VERSION.as_bytes()),
        ("busybox", &busybox),
        ("Dockerfile", APP_DOCKERFILE),
        ("start.sh", APP_START),
        ("cgi-bin/env", APP_CGI_ENV),
    ]);
    let tag = format!("dso-test/app:{hash}");

    let cache = cache_dir()?;
    let _lock = lock(&cache.join("app.lock"))?;
    if image_exists(&tag)? {
        return Ok(tag);
    }

    // A context of our own with explicit modes: git does not keep them reliably.
    let started = Instant::now();
    let context = cache.join(format!("app-context-{hash}"));
    remove_dir_if_present(&context)?;
    write_file(&context.join("Dockerfile"), APP_DOCKERFILE, 0o644)?;
    write_file(&context.join("busybox"), &busybox, 0o755)?;
    write_file(&context.join("app/start.sh"), APP_START, 0o755)?;
    write_file(&context.join("www/cgi-bin/env"), APP_CGI_ENV, 0o755)?;

    let mut build = Command::new("docker");
    build
        .args(["build", "--quiet", "--tag", &tag, "--label", TEST_LABEL])
        .args(["--label", &format!("dso.test.inputs={hash}")])
        .arg(&context);
    let built = docker::run(&mut build).with_context(|| format!("building {tag}"));
    remove_dir_if_present(&context)?;
    built?;

    eprintln!("built {tag} in {:.1?}", started.elapsed());
    Ok(tag)
}

/// Returns the tag of the Postgres image, building it first when the daemon does not have it.
/// The bootstrapped root is cached, so only the first build (or a change of packages or of
/// `slim.sh`) runs debootstrap; that step needs root and network access to the Debian mirror.
pub fn postgres_image() -> Result<String> {
    ensure_daemon()?;
    let mirror = std::env::var("DSO_TEST_DEBIAN_MIRROR")
        .unwrap_or_else(|_| DEFAULT_DEBIAN_MIRROR.to_owned());
    // LIMITATION: the hash covers what we ask the mirror for, not what it serves, so a Debian
    // point release keeps the tag — hashing the mirror's Release file would lift it, at the cost
    // of a network request per test run.
    let root_hash = digest(&[
        ("builder", BUILDER_VERSION.as_bytes()),
        ("suite", DEBIAN_SUITE.as_bytes()),
        ("mirror", mirror.as_bytes()),
        ("packages", POSTGRES_PACKAGES.as_bytes()),
        ("slim.sh", POSTGRES_SLIM),
    ]);
    let changes = POSTGRES_CHANGES.join("\n");
    let hash = digest(&[
        ("root", root_hash.as_bytes()),
        ("entrypoint.sh", POSTGRES_ENTRYPOINT),
        ("changes", changes.as_bytes()),
    ]);
    let tag = format!("dso-test/postgres:{hash}");

    let cache = cache_dir()?;
    let _lock = lock(&cache.join("postgres.lock"))?;
    if image_exists(&tag)? {
        return Ok(tag);
    }

    let started = Instant::now();
    let root = cache.join(format!("postgres-root-{root_hash}"));
    if !root.join("usr/lib/postgresql").is_dir() {
        bootstrap_postgres_root(&cache, &root, &mirror)?;
    }
    write_file(
        &root.join(POSTGRES_ENTRYPOINT_PATH),
        POSTGRES_ENTRYPOINT,
        0o755,
    )?;
    import_root(&root, &tag, &hash)?;

    eprintln!("built {tag} in {:.1?}", started.elapsed());
    Ok(tag)
}

/// Runs debootstrap into `root` (through a `.partial` directory, so an interrupted run is never
/// taken for a finished one), slims it, and drops roots of older input hashes.
// LIMITATION: debootstrap needs root, so other users depend on a root-built cache — running it
// in a user namespace (`unshare --map-root-user`) might lift it; not tried.
fn bootstrap_postgres_root(cache: &Path, root: &Path, mirror: &str) -> Result<()> {
    ensure!(
        is_root()?,
        "building the Postgres test image runs debootstrap, which needs root\nhint: run the \
         tests once as root (e.g. `sudo -E scripts/test.sh`); later runs reuse the cached image"
    );
    ensure_package("debootstrap", "/usr/sbin/debootstrap", "debootstrap")?;

    let partial = root.with_extension("partial");
    remove_dir_if_present(&partial)?;
    let debs = cache.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;

    let started = Instant::now();
    let mut debootstrap = Command::new("debootstrap");
    debootstrap
        .args([
            "--variant=minbase",
            &format!("--include={POSTGRES_PACKAGES}"),
        ])
        .arg(format!("--cache-dir={}", debs.display()))
        .arg(DEBIAN_SUITE)
        .arg(&partial)
        .arg(mirror);
    docker::run(&mut debootstrap).with_context(|| {
        format!(
            "bootstrapping the Postgres root from {mirror}\nhint: the Debian mirror must be \
             reachable; set DSO_TEST_DEBIAN_MIRROR to use another"
        )
    })?;
    eprintln!(
        "debootstrap of {} took {:.1?}",
        partial.display(),
        started.elapsed()
    );

    let mut slim = Command::new("sh");
    slim.args(["-s", "--"]).arg(&partial).stdin(Stdio::piped());
    run_with_stdin(&mut slim, POSTGRES_SLIM).context("slimming the Postgres root")?;

    fs::rename(&partial, root)
        .with_context(|| format!("renaming {} to {}", partial.display(), root.display()))?;

    // Roots of older inputs only take space now.
    for entry in fs::read_dir(cache).with_context(|| format!("listing {}", cache.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("postgres-root-") && path != root {
            remove_dir_if_present(&path)?;
        }
    }
    Ok(())
}

/// Streams `root` as a tar archive into `docker import`.
fn import_root(root: &Path, tag: &str, hash: &str) -> Result<()> {
    let mut tar = Command::new("tar");
    tar.args(["--numeric-owner", "-C"])
        .arg(root)
        .args(["-c", "."])
        .stdout(Stdio::piped());
    let shown_tar = show(&tar);
    let mut tar_child = tar
        .spawn()
        .with_context(|| format!("starting `{shown_tar}`"))?;
    let archive = tar_child.stdout.take().context("tar has no stdout")?;

    let mut import = Command::new("docker");
    import.arg("import");
    for change in POSTGRES_CHANGES {
        import.args(["--change", change]);
    }
    import
        .args([
            "--change",
            &format!("LABEL {TEST_LABEL} dso.test.inputs={hash}"),
        ])
        .args(["-", tag])
        .stdin(archive);
    let shown_import = format!("docker import - {tag}");
    let imported = import
        .output()
        .with_context(|| format!("starting `{shown_import}`"));

    // Close our copy of the pipe's read end, so tar fails with EPIPE instead of blocking when
    // docker never started.
    drop(import);

    let tar_status = tar_child
        .wait()
        .with_context(|| format!("waiting for `{shown_tar}`"))?;
    let imported = imported?;
    ensure!(tar_status.success(), "`{shown_tar}` failed ({tar_status})");
    check(&shown_import, &imported)
}

/// Reads Debian's static busybox, installing busybox-static first when we may.
fn read_busybox() -> Result<Vec<u8>> {
    ensure_package("busybox", BUSYBOX, "busybox-static")?;
    let bytes = fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX}"))?;
    ensure!(
        !has_interpreter(&bytes),
        "{BUSYBOX} is dynamically linked, so it cannot run in a FROM scratch image\nhint: apt-get \
         install busybox-static (it replaces the dynamic busybox package)"
    );
    Ok(bytes)
}

/// Whether an ELF64 little-endian file asks for a program interpreter (is dynamically linked).
/// Anything it cannot parse counts as dynamic.
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let field = |at: usize, len: usize| -> Option<u64> {
        let bytes = elf.get(at..at + len)?;
        Some(
            bytes
                .iter()
                .rev()
                .fold(0, |acc, &b| acc << 8 | u64::from(b)),
        )
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return true;
    }
    let (Some(offset), Some(size), Some(count)) = (field(0x20, 8), field(0x36, 2), field(0x38, 2))
    else {
        return true;
    };
    (0..count).any(|i| {
        let at = (offset + i * size) as usize;
        field(at, 4).is_none_or(|kind| kind == u64::from(PT_INTERP))
    })
}

/// Makes sure `path` exists, installing the Debian `package` with apt when running as root.
fn ensure_package(command: &str, path: &str, package: &str) -> Result<()> {
    if Path::new(path).exists() {
        return Ok(());
    }
    ensure!(
        is_root()?,
        "{path} ({command}) is missing\nhint: sudo apt-get install -y {package}"
    );

    // apt takes its own lock; ours keeps the two image builders from racing for it.
    let _lock = lock(&cache_dir()?.join("apt.lock"))?;
    if Path::new(path).exists() {
        return Ok(());
    }
    eprintln!("installing Debian package {package} for the test images");
    let install = || {
        let mut apt = Command::new("apt-get");
        apt.env("DEBIAN_FRONTEND", "noninteractive").args([
            "install",
            "-y",
            "-q",
            "-o",
            "DPkg::Lock::Timeout=120",
            package,
        ]);
        docker::run(&mut apt)
    };
    if install().is_err() {
        let mut update = Command::new("apt-get");
        update.args(["update", "-q"]);
        docker::run(&mut update)?;
        install().with_context(|| format!("installing {package}"))?;
    }
    ensure!(
        Path::new(path).exists(),
        "{package} is installed but {path} is still missing"
    );
    Ok(())
}

/// Whether the image is present in the local daemon.
fn image_exists(tag: &str) -> Result<bool> {
    let output = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", tag])
        .output()
        .context("running docker image inspect")?;
    if output.status.success() {
        return Ok(true);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        stderr.contains("No such image"),
        "docker image inspect {tag}: {}",
        stderr.trim()
    );
    Ok(false)
}

/// The cache for build inputs: `$DSO_TEST_CACHE`, else `/var/cache/dso-test` as root, else
/// `$XDG_CACHE_HOME/dso-test` or `~/.cache/dso-test`.
pub fn cache_dir() -> Result<PathBuf> {
    let dir = if let Some(dir) = std::env::var_os("DSO_TEST_CACHE") {
        PathBuf::from(dir)
    } else if is_root()? {
        PathBuf::from("/var/cache/dso-test")
    } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(dir).join("dso-test")
    } else {
        let home = std::env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set")?;
        PathBuf::from(home).join(".cache/dso-test")
    };
    fs::create_dir_all(&dir)
        .with_context(|| format!("creating the test cache {}", dir.display()))?;
    Ok(dir)
}

/// Takes an exclusive lock on `path`, blocking until it is free; released when dropped.
fn lock(path: &Path) -> Result<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

/// Whether this process runs as root (the owner of `/proc/self` is the effective uid).
fn is_root() -> Result<bool> {
    let meta = fs::metadata("/proc/self").context("reading /proc/self")?;
    Ok(meta.uid() == 0)
}

/// Hex digest of named inputs, shortened to 16 digits for a tag. Each part is length-prefixed so
/// no two input sets encode the same.
fn digest(parts: &[(&str, &[u8])]) -> String {
    let mut hasher = Sha256::new();
    for (name, bytes) in parts {
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    hex::encode(hasher.finalize())[..16].to_owned()
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", path.display()))
}

fn remove_dir_if_present(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Runs a command with `input` on its stdin; fails with its stderr on a non-zero exit.
fn run_with_stdin(command: &mut Command, input: &[u8]) -> Result<()> {
    use std::io::Write;

    let shown = show(command);
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{shown}`"))?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    stdin
        .write_all(input)
        .with_context(|| format!("writing to `{shown}`"))?;
    drop(stdin);
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{shown}`"))?;
    check(&shown, &output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_separates_parts() {
        assert_ne!(digest(&[("a", b"bc")]), digest(&[("ab", b"c")]));
        assert_ne!(
            digest(&[("a", b""), ("b", b"")]),
            digest(&[("a", b"\0\0\0\0\0\0\0\0\x01b")])
        );
        assert_eq!(digest(&[("a", b"x")]).len(), 16);
    }

    #[test]
    fn dynamic_elf_is_detected() {
        assert!(has_interpreter(b"#!/bin/sh\n"));
        let shell = fs::read("/bin/sh").unwrap();
        assert!(
            has_interpreter(&shell),
            "/bin/sh of a Debian host is dynamically linked"
        );
    }
}
