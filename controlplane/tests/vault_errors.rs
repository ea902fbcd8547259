//! The vault library's public surface on real files: each kind of damage maps to its own
//! `VaultError` variant, and the damaged file is never rewritten.

use std::fs;
use std::time::SystemTime;

use controlplane::secret::SecretValue;
use controlplane::vault::key::MasterKey;
use controlplane::vault::{NewKey, Vault, VaultError, VaultFiles, parse_path};

fn no_passphrase() -> Result<SecretValue, VaultError> {
    Err(VaultError::PassphraseRequired)
}

/// A vault with one secret, in a temp dir.
fn vault_with_secret() -> (tempfile::TempDir, VaultFiles) {
    let dir = tempfile::tempdir().unwrap();
    let files = VaultFiles::in_dir(dir.path());
    let (vault, _) = Vault::create(files.clone(), NewKey::Random, false).unwrap();
    let path = parse_path("app/secret").unwrap();
    vault
        .update(|c| Ok(c.set(path, SecretValue::from_slice(b"v"), SystemTime::now(), 10)))
        .unwrap();
    (dir, files)
}

fn open_error(files: &VaultFiles, env_key: Option<MasterKey>) -> VaultError {
    Vault::open(files.clone(), env_key, &mut no_passphrase).unwrap_err()
}

#[test]
fn each_damage_has_its_own_variant_and_leaves_the_file_alone() {
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    type Check = fn(&VaultError) -> bool;
    let cases: Vec<(&str, Damage, Check)> = vec![
        ("ciphertext byte", Box::new(|b| b[95] ^= 1), |e| {
            matches!(e, VaultError::CiphertextTampered { .. })
        }),
        ("tag byte", Box::new(|b| *b.last_mut().unwrap() ^= 1), |e| {
            matches!(e, VaultError::CiphertextTampered { .. })
        }),
        ("header byte", Box::new(|b| b[30] ^= 1), |e| {
            matches!(e, VaultError::HeaderTampered { .. })
        }),
        ("truncated", Box::new(|b| b.truncate(b.len() - 1)), |e| {
            matches!(e, VaultError::Truncated { .. })
        }),
        ("trailing bytes", Box::new(|b| b.push(0)), |e| {
            matches!(e, VaultError::TrailingData { .. })
        }),
        ("foreign", Box::new(|b| b[0] = b'X'), |e| {
            matches!(e, VaultError::ForeignFile { .. })
        }),
        ("newer version", Box::new(|b| b[8] = 2), |e| {
            matches!(e, VaultError::UnsupportedVersion { version: 2, .. })
        }),
    ];
    for (name, damage, check) in cases {
        let (_dir, files) = vault_with_secret();
        let mut bytes = fs::read(&files.vault).unwrap();
        damage(&mut bytes);
        fs::write(&files.vault, &bytes).unwrap();

        let err = open_error(&files, None);
        assert!(check(&err), "{name}: got {err}");
        assert!(err.hint().is_some(), "{name}: no hint");
        assert_eq!(
            fs::read(&files.vault).unwrap(),
            bytes,
            "{name}: file changed"
        );
    }
}

#[test]
fn wrong_key_is_not_reported_as_damage() {
    let (_dir, files) = vault_with_secret();
    let other = MasterKey::generate().unwrap();
    let err = open_error(&files, Some(other));
    assert!(matches!(err, VaultError::WrongKey { .. }), "{err}");
}

#[test]
fn writer_sees_the_newest_file_not_the_one_it_opened() {
    // Two handles opened before either writes: the second write must keep the first one's.
    let (_dir, files) = vault_with_secret();
    let (a, _) = Vault::open(files.clone(), None, &mut no_passphrase).unwrap();
    let (b, _) = Vault::open(files.clone(), None, &mut no_passphrase).unwrap();
    let now = SystemTime::now();
    a.update(|c| Ok(c.set(parse_path("x/a")?, SecretValue::from_slice(b"1"), now, 10)))
        .unwrap();
    b.update(|c| Ok(c.set(parse_path("x/b")?, SecretValue::from_slice(b"2"), now, 10)))
        .unwrap();
    let contents = a.read().unwrap();
    assert!(contents.latest(&parse_path("x/a").unwrap()).is_some());
    assert!(contents.latest(&parse_path("x/b").unwrap()).is_some());
}
